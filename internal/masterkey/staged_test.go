package masterkey_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/masterkey"
)

// A staged key opens what it sealed and seals nothing; the primary key is the first not staged,
// wherever the staged keys are; a file of staged keys only is refused.
func TestStagedKeys(t *testing.T) {
	a, x := newMasterKey(t), newMasterKey(t)
	keys := []masterkey.Key{{Secret: x, Staged: true}, {Secret: a}}
	text := masterkey.Format(keys)
	if !strings.Contains(string(text), "\nstaged ") {
		t.Fatalf("Format does not mark the staged key:\n%s", text)
	}
	parsed, err := masterkey.Parse(text)
	if err != nil || len(parsed) != 2 || !parsed[0].Staged || parsed[1].Staged || !bytes.Equal(parsed[0].Secret, x) {
		t.Fatalf("Parse(Format) = %v, %v", masterkey.IDs(parsed), err)
	}
	ring, err := masterkey.NewKeyringOf(parsed)
	if err != nil {
		t.Fatal(err)
	}
	if ring.Primary() != masterkey.ID(a) || !ring.Holds(masterkey.ID(x)) {
		t.Fatalf("Primary = %s, want %s; holds %v", ring.Primary(), masterkey.ID(a), ring.KeyIDs())
	}
	for range 20 {
		blob, err := ring.Seal([]byte("p"), []byte("aad"))
		if err != nil || masterkey.SealedBy(blob) != masterkey.ID(a) {
			t.Fatalf("a staged key sealed: %s, %v", masterkey.SealedBy(blob), err)
		}
	}
	// What a replica that promoted x seals, this one opens; re-sealed, it goes back to a.
	byX, _ := mustRing(t, x, a).Seal([]byte("from a promoted replica"), []byte("aad"))
	if got, err := ring.Open(byX, []byte("aad")); err != nil || string(got) != "from a promoted replica" {
		t.Fatalf("Open(sealed by the staged key) = %q, %v", got, err)
	}
	if re, err := ring.Reseal(byX, []byte("aad")); err != nil || masterkey.SealedBy(re) != masterkey.ID(a) {
		t.Errorf("Reseal = %v, sealed by %s", err, masterkey.SealedBy(re))
	}
	if _, err := masterkey.Parse(masterkey.Format([]masterkey.Key{{Secret: x, Staged: true}})); err == nil {
		t.Error("a file of staged keys only parsed")
	}
	if err := ring.Set([]masterkey.Key{{Secret: x, Staged: true}}); err == nil {
		t.Error("Set of staged keys only succeeded")
	}
	if err := masterkey.Write(t.TempDir()+"/k", []masterkey.Key{{Secret: x, Staged: true}}); err == nil {
		t.Error("Write of staged keys only succeeded")
	}
	if _, err := mustRing(t, a).Open(byX, []byte("aad")); !errors.Is(err, masterkey.ErrSealed) {
		t.Errorf("Open without the key = %v, want ErrSealed", err)
	}
}

// FuzzParse: any content parses to keys that format back to the same keys, or fails without
// quoting the file; a parsed file always has a key that seals.
func FuzzParse(f *testing.F) {
	k := bytes.Repeat([]byte{7}, masterkey.Size)
	f.Add(masterkey.Format([]masterkey.Key{{Secret: k}}))
	f.Add(masterkey.Format([]masterkey.Key{{Secret: bytes.Repeat([]byte{8}, 32), Staged: true}, {Secret: k}}))
	f.Add(k)
	f.Add([]byte("staged \n"))
	f.Add([]byte("# only a comment\n"))
	f.Add([]byte("staged staged AAAA\r\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := masterkey.Parse(data)
		if err != nil {
			if len(data) > 8 && strings.Contains(err.Error(), string(data)) {
				t.Fatalf("the error quotes the file: %v", err)
			}
			return
		}
		if len(masterkey.Active(keys)) == 0 {
			t.Fatal("parsed a file without a key that seals")
		}
		again, err := masterkey.Parse(masterkey.Format(keys))
		if err != nil || len(again) != len(keys) {
			t.Fatalf("Parse(Format(keys)) = %d keys, %v; want %d", len(again), err, len(keys))
		}
		for i := range keys {
			if !bytes.Equal(again[i].Secret, keys[i].Secret) || again[i].Staged != keys[i].Staged {
				t.Fatalf("key %d changed in a round trip", i)
			}
		}
	})
}
