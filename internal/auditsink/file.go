package auditsink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// fileSink appends JSON lines, one record a line, to a file created 0600. The file is opened
// for each batch, so a log rotator may move it away at any time (the next batch starts a new
// one), and synced before the batch counts as delivered. A crash in the middle of a batch may
// leave a torn last line: the next batch starts on a new line, and re-sends that record.
type fileSink struct {
	name, path string
}

func newFileSink(spec Spec) *fileSink { return &fileSink{name: spec.Name, path: spec.Path} }

func (s *fileSink) Name() string { return s.name }

func (s *fileSink) Close() error { return nil }

func (s *fileSink) Deliver(ctx context.Context, batch []Record) (err error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for _, r := range batch {
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("encode seq %d: %w", r.Seq(), err)
		}
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	torn, err := endsTorn(f)
	if err != nil {
		return err
	}
	if torn {
		if _, err := f.Write([]byte{'\n'}); err != nil {
			return err
		}
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return err
	}
	return f.Sync()
}

// endsTorn reports whether f is not empty and does not end with a newline.
func endsTorn(f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return false, err
	}
	var b [1]byte
	if _, err := f.ReadAt(b[:], fi.Size()-1); err != nil && err != io.EOF {
		return false, err
	}
	return b[0] != '\n', nil
}
