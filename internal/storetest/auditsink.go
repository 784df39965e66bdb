package storetest

import (
	"testing"

	"github.com/mandate-dev/mandate/internal/auditsink"
)

// Each sink's cursor: the zero Cursor until saved; each field only moves forward; sinks apart.
func testSinkCursors(t *testing.T, s Store) {
	ctx := t.Context()
	get := func(sink string) auditsink.Cursor {
		t.Helper()
		c, err := s.SinkCursor(ctx, sink)
		if err != nil {
			t.Fatalf("SinkCursor(%s): %v", sink, err)
		}
		return c
	}
	save := func(sink string, c auditsink.Cursor) {
		t.Helper()
		if err := s.SaveSinkCursor(ctx, sink, c); err != nil {
			t.Fatalf("SaveSinkCursor(%s, %+v): %v", sink, c, err)
		}
	}
	const a, b = "file:/var/log/a.jsonl", "https://siem.example/hook"
	if got := get(a); got != (auditsink.Cursor{}) {
		t.Errorf("new sink: cursor %+v, want zero", got)
	}
	for _, step := range []struct {
		save, want auditsink.Cursor
	}{
		{auditsink.Cursor{Seq: 10, CheckpointSeq: 0}, auditsink.Cursor{Seq: 10, CheckpointSeq: 0}},
		{auditsink.Cursor{Seq: 20, CheckpointSeq: 16}, auditsink.Cursor{Seq: 20, CheckpointSeq: 16}},
		{auditsink.Cursor{Seq: 12, CheckpointSeq: 8}, auditsink.Cursor{Seq: 20, CheckpointSeq: 16}},  // a late save
		{auditsink.Cursor{Seq: 25, CheckpointSeq: 8}, auditsink.Cursor{Seq: 25, CheckpointSeq: 16}},  // each field apart
		{auditsink.Cursor{Seq: 25, CheckpointSeq: 24}, auditsink.Cursor{Seq: 25, CheckpointSeq: 24}}, // the same again
	} {
		save(a, step.save)
		if got := get(a); got != step.want {
			t.Errorf("after saving %+v: cursor %+v, want %+v", step.save, got, step.want)
		}
	}
	if got := get(b); got != (auditsink.Cursor{}) {
		t.Errorf("another sink: cursor %+v, want zero", got)
	}
	save(b, auditsink.Cursor{Seq: 3})
	if got := get(a); got.Seq != 25 {
		t.Errorf("saving sink b moved sink a to %+v", got)
	}
}

// Saves racing (a late batch's save against a newer one) leave the greatest.
func testSinkCursorsConcurrent(t *testing.T, s Store) {
	const n = 20
	errs := runConcurrently(n, func(i int) error {
		return s.SaveSinkCursor(t.Context(), "sink", auditsink.Cursor{Seq: int64(i + 1), CheckpointSeq: int64(n - i)})
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.SinkCursor(t.Context(), "sink")
	if err != nil {
		t.Fatal(err)
	}
	if want := (auditsink.Cursor{Seq: n, CheckpointSeq: n}); got != want {
		t.Errorf("cursor %+v, want %+v", got, want)
	}
}
