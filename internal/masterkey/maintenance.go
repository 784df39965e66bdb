package masterkey

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// Audit actions of the master key operations.
const (
	ActionRotate  = "master_key.rotate"
	ActionAdd     = "master_key.add"
	ActionPromote = "master_key.promote"
	ActionRewrap  = "master_key.rewrap"
	ActionPrune   = "master_key.prune"
)

// Store is what the offline operations need of the database: every sealed blob in pages,
// compare-and-swap writes of re-sealed ones (each row written only if it still holds the blob
// that was read; ev appended when a batch wrote a row), and the audit trail. The composition
// root opens it (internal/sqlstore implements it).
type Store interface {
	SealedSecrets(ctx context.Context, after vault.SealedRow, limit int) ([]vault.SealedRow, error)
	RewrapSecrets(ctx context.Context, rows []vault.SealedRow, ev audit.Event) (int, error)
	SealedSigningKeys(ctx context.Context, after string, limit int) ([]token.SealedKey, error)
	ResealSigningKeys(ctx context.Context, keys []token.SealedKey, ev audit.Event) (int, error)
	AppendEvent(ctx context.Context, ev audit.Event) error
}

// Batch is how many rows one re-wrap transaction writes: small, so that the write lock a
// running server also needs is held briefly.
const Batch = 100

// passes bounds the passes over the database: a pass re-reads the rows a server changed while
// the previous pass was re-wrapping them.
const passes = 5

// Maintenance runs the offline operations on one master key file and the database it opens:
// they work while servers run.
type Maintenance struct {
	Path  string
	Store Store
	Now   func() time.Time // nil = time.Now

	// BeforeWrite, when set (tests), runs between reading a page of rows and writing it back.
	BeforeWrite func()
}

func (m *Maintenance) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Maintenance) record(ctx context.Context, action, target, detail string) error {
	ev := audit.New(m.now(), "", action)
	ev.ActorType, ev.Target, ev.Detail, ev.Outcome = audit.ActorSystem, target, detail, audit.OutcomeSuccess
	return m.Store.AppendEvent(ctx, ev)
}

// Stats counts the rows a re-wrap wrote.
type Stats struct{ Secrets, SigningKeys int }

func (s Stats) String() string {
	return plural(s.Secrets, "upstream secret") + " and " + plural(s.SigningKeys, "signing key")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// UnopenedError says how many sealed rows do not open with a set of keys, per the key id they
// name ("none" for a signing key of an earlier version, which names none).
type UnopenedError struct {
	Rows  map[string]int
	Total int // every sealed row
}

func (e *UnopenedError) Error() string {
	ids := make([]string, 0, len(e.Rows))
	n := 0
	for id, c := range e.Rows {
		ids = append(ids, id)
		n += c
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		if id == "none" {
			parts[i] = fmt.Sprintf("%d of an earlier version, naming no key", e.Rows[id])
		} else {
			parts[i] = fmt.Sprintf("%d sealed by master key %s", e.Rows[id], id)
		}
	}
	return fmt.Sprintf("%s (%s)", plural(n, "row"), strings.Join(parts, ", "))
}

// Rotated is what Rotate did.
type Rotated struct {
	ID    string   // the new key, in the file from then on (even when the re-wrap failed)
	Keys  []string // the ids of the file's keys, newest first
	Stats Stats
}

// Rotate adds a fresh key in front of the file as its primary key at once, then re-wraps
// everything under it: one step, for replicas that share the file. It refuses (an
// *UnopenedError), changing nothing, when the file does not open every sealed row.
func (m *Maintenance) Rotate(ctx context.Context) (Rotated, error) {
	keys, err := Read(m.Path)
	if err != nil {
		return Rotated{}, err
	}
	defer Clear(keys)
	if err := m.check(ctx, keys); err != nil {
		return Rotated{}, err
	}
	fresh, err := New()
	if err != nil {
		return Rotated{}, err
	}
	newKeys := append([]Key{fresh}, keys...)
	if err := Write(m.Path, newKeys); err != nil {
		return Rotated{}, err
	}
	r := Rotated{ID: fresh.ID(), Keys: IDs(newKeys)}
	if err := m.record(ctx, ActionRotate, r.ID, "keys="+strings.Join(r.Keys, ",")); err != nil {
		return r, fmt.Errorf("record the rotation: %w", err)
	}
	r.Stats, err = m.rewrap(ctx, newKeys)
	return r, err
}

// check refuses (an *UnopenedError) when keys do not open every sealed row.
func (m *Maintenance) check(ctx context.Context, keys []Key) error {
	unopened, total, err := m.Unopened(ctx, keys)
	if err != nil {
		return err
	}
	if len(unopened) > 0 {
		return &UnopenedError{Rows: unopened, Total: total}
	}
	return nil
}

// Added is what Add did.
type Added struct {
	ID      string
	Already bool     // the file held the key already (staged or not): nothing changed
	Keys    []string // the ids of the file's keys, newest first
}

// Add puts key in front of the file as a staged key: the replicas that load the file open what
// it seals, but nothing is sealed with it until Promote. Step one of the two-step distribution:
// add one key to the file of every replica, then promote it on each.
func (m *Maintenance) Add(ctx context.Context, key Key) (Added, error) {
	keys, err := Read(m.Path)
	if err != nil {
		return Added{}, err
	}
	defer Clear(keys)
	id := key.ID()
	for _, k := range keys {
		if k.ID() == id {
			return Added{ID: id, Already: true, Keys: IDs(keys)}, nil
		}
	}
	if err := m.check(ctx, keys); err != nil {
		return Added{}, err
	}
	newKeys := append([]Key{{Secret: key.Secret, Staged: true}}, keys...)
	if err := Write(m.Path, newKeys); err != nil {
		return Added{}, err
	}
	a := Added{ID: id, Keys: IDs(newKeys)}
	if err := m.record(ctx, ActionAdd, id, "staged keys="+strings.Join(keyIDs(newKeys), ",")); err != nil {
		return a, fmt.Errorf("record the added key (it is in the file): %w", err)
	}
	return a, nil
}

func keyIDs(keys []Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID()
	}
	return out
}

// ErrNotInFile is returned by Promote for a key the file does not hold.
var ErrNotInFile = errors.New("the master key file does not hold that key")

// Promote makes the key id of the file its primary key: from the next reload the replica that
// loads the file seals with it. It returns false when it already was.
func (m *Maintenance) Promote(ctx context.Context, id string) (bool, error) {
	keys, err := Read(m.Path)
	if err != nil {
		return false, err
	}
	defer Clear(keys)
	at := -1
	for i, k := range keys {
		if k.ID() == id {
			at = i
		}
	}
	if at < 0 {
		return false, ErrNotInFile
	}
	primary := Active(keys)[0]
	if !keys[at].Staged && ID(primary) == id {
		return false, nil
	}
	k := keys[at]
	k.Staged = false
	newKeys := append([]Key{k}, append(keys[:at:at], keys[at+1:]...)...)
	if err := Write(m.Path, newKeys); err != nil {
		return false, err
	}
	if err := m.record(ctx, ActionPromote, id, "keys="+strings.Join(keyIDs(newKeys), ",")); err != nil {
		return true, fmt.Errorf("record the promotion (the file was changed): %w", err)
	}
	return true, nil
}

// Rewrap re-wraps every row not sealed by the file's primary key under it, in passes until a
// pass meets no row that a server changed while it was being re-wrapped; it returns the
// primary key's id.
func (m *Maintenance) Rewrap(ctx context.Context) (string, Stats, error) {
	keys, err := Read(m.Path)
	if err != nil {
		return "", Stats{}, err
	}
	defer Clear(keys)
	st, err := m.rewrap(ctx, keys)
	return ID(Active(keys)[0]), st, err
}

// ErrKeptChanging is returned (wrapped) by a re-wrap whose every pass met rows that servers
// changed meanwhile: nothing is lost; run it again.
var ErrKeptChanging = errors.New("rows kept changing while they were being re-wrapped")

func (m *Maintenance) rewrap(ctx context.Context, keys []Key) (Stats, error) {
	ring, err := NewKeyringOf(keys)
	if err != nil {
		return Stats{}, err
	}
	var total Stats
	for range passes {
		st, conflicts, err := m.rewrapPass(ctx, ring)
		total.Secrets += st.Secrets
		total.SigningKeys += st.SigningKeys
		if err != nil || conflicts == 0 {
			return total, err
		}
	}
	return total, fmt.Errorf("%w (%s so far)", ErrKeptChanging, total)
}

func (m *Maintenance) rewrapPass(ctx context.Context, ring *Keyring) (st Stats, conflicts int, err error) {
	primary := ring.Primary()
	env := vault.NewEnvelopes(ring)
	event := func(table string) audit.Event {
		ev := audit.New(m.now(), "", ActionRewrap)
		ev.ActorType, ev.Target, ev.Detail = audit.ActorSystem, primary, "table="+table
		return ev
	}
	var after vault.SealedRow
	for {
		page, err := m.Store.SealedSecrets(ctx, after, Batch)
		if err != nil {
			return st, conflicts, err
		}
		if len(page) == 0 {
			break
		}
		after = vault.SealedRow{Upstream: page[len(page)-1].Upstream, Kind: page[len(page)-1].Kind}
		var todo []vault.SealedRow
		for _, r := range page {
			nb, err := env.Rewrap(r.Upstream, r.Kind, r.Sealed)
			if err != nil {
				return st, conflicts, fmt.Errorf("the %s secret of upstream %s does not open with the keys of %s: %w", r.Kind, r.Upstream, m.Path, err)
			}
			if !bytes.Equal(nb, r.Sealed) {
				r.New = nb
				todo = append(todo, r)
			}
		}
		if len(todo) > 0 {
			if m.BeforeWrite != nil {
				m.BeforeWrite()
			}
			n, err := m.Store.RewrapSecrets(ctx, todo, event("upstream_secrets"))
			if err != nil {
				return st, conflicts, err
			}
			st.Secrets += n
			conflicts += len(todo) - n
		}
		if len(page) < Batch {
			break
		}
	}
	afterKID := ""
	for {
		page, err := m.Store.SealedSigningKeys(ctx, afterKID, Batch)
		if err != nil {
			return st, conflicts, err
		}
		if len(page) == 0 {
			break
		}
		afterKID = page[len(page)-1].KID
		var todo []token.SealedKey
		for _, k := range page {
			nb, err := ring.Reseal(k.Sealed, []byte(k.KID))
			if err != nil {
				return st, conflicts, fmt.Errorf("signing key %s does not open with the keys of %s: %w", k.KID, m.Path, err)
			}
			if !bytes.Equal(nb, k.Sealed) {
				k.New = nb
				todo = append(todo, k)
			}
		}
		if len(todo) > 0 {
			if m.BeforeWrite != nil {
				m.BeforeWrite()
			}
			n, err := m.Store.ResealSigningKeys(ctx, todo, event("signing_keys"))
			if err != nil {
				return st, conflicts, err
			}
			st.SigningKeys += n
			conflicts += len(todo) - n
		}
		if len(page) < Batch {
			break
		}
	}
	return st, conflicts, nil
}

// Pruned is what Prune did.
type Pruned struct {
	Dropped []string // ids of the keys dropped; none when there was nothing to prune
	Primary string
	Keys    []string // the ids of the file's keys after, newest first
}

// ErrFileChanged is returned by Prune when the file changed while it was being checked.
var ErrFileChanged = errors.New("the master key file changed while it was being checked; run the command again")

// Prune drops the retired keys from the file: every key but the primary and the staged ones,
// once every sealed row opens without them. It refuses (an *UnopenedError) while some row
// needs a retired key: re-wrap first.
func (m *Maintenance) Prune(ctx context.Context) (Pruned, error) {
	raw, err := os.ReadFile(m.Path)
	if err != nil {
		return Pruned{}, fmt.Errorf("read master key file: %w", err)
	}
	defer clear(raw)
	keys, err := Read(m.Path)
	if err != nil {
		return Pruned{}, err
	}
	defer Clear(keys)
	primary := ID(Active(keys)[0])
	var keep []Key
	var dropped []string
	for _, k := range keys {
		if k.Staged || k.ID() == primary {
			keep = append(keep, k)
		} else {
			dropped = append(dropped, k.ID())
		}
	}
	p := Pruned{Primary: primary, Keys: IDs(keys)}
	if len(dropped) == 0 {
		return p, nil
	}
	if err := m.check(ctx, keep); err != nil {
		return p, err
	}
	// Write only over the file that was checked (a key may have been added meanwhile).
	now, err := os.ReadFile(m.Path)
	if err != nil {
		return p, fmt.Errorf("read master key file: %w", err)
	}
	defer clear(now)
	if !bytes.Equal(now, raw) {
		return p, ErrFileChanged
	}
	if err := Write(m.Path, keep); err != nil {
		return p, err
	}
	p.Dropped, p.Keys = dropped, IDs(keep)
	if err := m.record(ctx, ActionPrune, primary, "dropped="+strings.Join(dropped, ",")); err != nil {
		return p, fmt.Errorf("record the pruning (the file was pruned): %w", err)
	}
	return p, nil
}

// Unopened counts, per the master key id they name ("none" for a signing key sealed by an
// earlier version, which names none), the sealed rows that do not open with keys; and every
// sealed row.
func (m *Maintenance) Unopened(ctx context.Context, keys []Key) (map[string]int, int, error) {
	ring, err := NewKeyringOf(keys)
	if err != nil {
		return nil, 0, err
	}
	env := vault.NewEnvelopes(ring)
	bad, total := map[string]int{}, 0
	err = m.scan(ctx, func(r vault.SealedRow) {
		total++
		if env.CanOpen(r.Upstream, r.Kind, r.Sealed) != nil {
			bad[orNone(vault.WrappedBy(r.Sealed))]++
		}
	}, func(k token.SealedKey) {
		total++
		plain, err := ring.Open(k.Sealed, []byte(k.KID))
		clear(plain)
		if err != nil {
			bad[orNone(SealedBy(k.Sealed))]++
		}
	})
	return bad, total, err
}

// Count returns how many sealed rows each master key id seals ("none" for signing keys of an
// earlier version).
func (m *Maintenance) Count(ctx context.Context) (map[string]int, error) {
	n := map[string]int{}
	err := m.scan(ctx, func(r vault.SealedRow) { n[orNone(vault.WrappedBy(r.Sealed))]++ },
		func(k token.SealedKey) { n[orNone(SealedBy(k.Sealed))]++ })
	return n, err
}

// scan calls secret for every stored secret and key for every signing key, in pages.
func (m *Maintenance) scan(ctx context.Context, secret func(vault.SealedRow), key func(token.SealedKey)) error {
	var after vault.SealedRow
	for {
		page, err := m.Store.SealedSecrets(ctx, after, Batch)
		if err != nil {
			return err
		}
		for _, r := range page {
			secret(r)
		}
		if len(page) < Batch {
			break
		}
		after = vault.SealedRow{Upstream: page[len(page)-1].Upstream, Kind: page[len(page)-1].Kind}
	}
	afterKID := ""
	for {
		page, err := m.Store.SealedSigningKeys(ctx, afterKID, Batch)
		if err != nil {
			return err
		}
		for _, k := range page {
			key(k)
		}
		if len(page) < Batch {
			break
		}
		afterKID = page[len(page)-1].KID
	}
	return nil
}

func orNone(id string) string {
	if id == "" {
		return "none"
	}
	return id
}
