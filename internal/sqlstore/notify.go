package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-dev/mandate/internal/ids"
)

// KindAgentChanged is the Kind of a Change to an agent or its keys (an update, a claim, a key
// added, rotated or revoked, the agent purged): a copy of the agent must be dropped. Its ID is
// the agent's id, or "" for every agent (after the feed may have missed changes).
const KindAgentChanged = "agent.changed"

// Change is one committed change that a copy held in memory may have to follow: a revocation log
// entry (Kind is token.KindAgent, KindGrant, KindTask, KindToken or KindKey, ID the revoked id,
// Seq its seq in the log) or a change to an agent (Kind is KindAgentChanged, Seq 0).
type Change struct {
	Kind string
	ID   string
	Seq  int64
}

// OnChange makes the store call fn with every Change committed from then on, by this process or
// (on PostgreSQL) by any other replica on the same database. Several functions may be
// registered; fn must not block.
//
// A change of this process is delivered right after its transaction commits, by the goroutine
// that committed it. On PostgreSQL the transaction also sends it with pg_notify (sent only on
// commit), and a dedicated connection LISTENs for those of other replicas. While that
// connection is down, and when it is back, the store reads the revocation log from the last seq
// it delivered, so no revocation is missed, and delivers Change{Kind: KindAgentChanged} with no
// ID (every agent may have changed) on losing the connection, on every poll while it is down
// and when it is back. On SQLite (one process) local delivery is all there is.
func (s *Store) OnChange(fn func(Change)) {
	f := &s.changes
	f.mu.Lock()
	defer f.mu.Unlock()
	subs := append(f.subs[:len(f.subs):len(f.subs)], fn)
	f.subs = subs
	f.subsSnap.Store(&subs)
	if s.dialect == DialectPostgres && f.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		f.stop, f.done = cancel, make(chan struct{})
		// What other replicas commit from now on is delivered: the log is followed from here
		// (when the database answers; else from where the listener first finds it).
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		cursor := s.catchUp(qctx, -1)
		qcancel()
		go func() {
			defer close(f.done)
			s.listen(ctx, cursor)
		}()
	}
}

// changeFeed is the Store's part of OnChange.
type changeFeed struct {
	mu       sync.Mutex
	subs     []func(Change)
	subsSnap atomic.Pointer[[]func(Change)] // subs, read without the lock at every commit

	// PostgreSQL only.
	dsn     string
	channel string // the NOTIFY channel, one per database and schema
	origin  string // this store's id in its notifications, which its own listener skips
	stop    context.CancelFunc
	done    chan struct{}
	// dial opens the listening connection (a test replaces it to keep the connection down).
	dial func(ctx context.Context) (*pgx.Conn, error)
	// pollEvery is how often the revocation log is read while the listener is down.
	pollEvery time.Duration
	// idleCheck is how long the listener waits for a notification before it checks that its
	// connection is alive.
	idleCheck time.Duration
	log       *slog.Logger
}

func (f *changeFeed) publish(cs []Change) {
	subs := f.subsSnap.Load()
	if subs == nil {
		return
	}
	for _, c := range cs {
		for _, fn := range *subs {
			fn(c)
		}
	}
}

// close stops the listener, if it runs, and waits for it.
func (f *changeFeed) close() {
	f.mu.Lock()
	stop, done := f.stop, f.done
	f.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// txChanges holds the changes of each open write transaction (*sql.Tx → *[]Change), noted by
// noteChange and published by Store.tx once the transaction commits.
var txChanges sync.Map

// noteChange records c as a change of tx, delivered if and when tx commits. tx must come from
// Store.tx (writeTx).
func noteChange(tx *sql.Tx, c Change) {
	if p, ok := txChanges.Load(tx); ok {
		l := p.(*[]Change)
		*l = append(*l, c)
	}
}

// trackChanges starts collecting the changes of tx; the returned function stops it and returns
// them.
func trackChanges(tx *sql.Tx) func() []Change {
	var l []Change
	txChanges.Store(tx, &l)
	return func() []Change {
		txChanges.Delete(tx)
		return l
	}
}

// notifyPayloadMax bounds one notification's payload (PostgreSQL's limit is 8000 bytes).
const notifyPayloadMax = 7000

// sendChanges sends cs to the other replicas with pg_notify, in tx, so they go out only if tx
// commits.
func (s *Store) sendChanges(ctx context.Context, tx *sql.Tx, cs []Change) error {
	if s.dialect != DialectPostgres || len(cs) == 0 {
		return nil
	}
	for _, payload := range encodeChanges(s.changes.origin, cs) {
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, s.changes.channel, payload); err != nil {
			return fmt.Errorf("notify replicas: %w", err)
		}
	}
	return nil
}

// encodeChanges makes the payloads of the notifications of cs: origin on the first line, then
// one line per change: seq, kind and id separated by tabs; more changes than fit in one payload
// go in several. Kinds and ids hold no tab or newline (ids are generated, thumbprints base64url).
func encodeChanges(origin string, cs []Change) []string {
	var out []string
	var b strings.Builder
	for _, c := range cs {
		line := strconv.FormatInt(c.Seq, 10) + "\t" + c.Kind + "\t" + c.ID + "\n"
		if b.Len() > 0 && b.Len()+len(line) > notifyPayloadMax {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(origin + "\n")
		}
		b.WriteString(line)
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// parseChanges reads a payload of sendChanges; a malformed line is skipped.
func parseChanges(payload string) (origin string, cs []Change) {
	origin, rest, _ := strings.Cut(payload, "\n")
	for line := range strings.SplitSeq(rest, "\n") {
		seq, rest, ok1 := strings.Cut(line, "\t")
		kind, id, ok2 := strings.Cut(rest, "\t")
		n, err := strconv.ParseInt(seq, 10, 64)
		if !ok1 || !ok2 || err != nil || n < 0 || kind == "" || strings.Contains(id, "\t") {
			continue
		}
		cs = append(cs, Change{Kind: kind, ID: id, Seq: n})
	}
	return origin, cs
}

// setUpChanges prepares the PostgreSQL side of the change feed: the channel of this database and
// schema (replicas on other schemas of the same database hear nothing of it) and how to connect.
func (s *Store) setUpChanges(ctx context.Context, dsn string) error {
	var schema string
	if err := s.db.QueryRowContext(ctx, `SELECT current_database() || '.' || current_schema()`).Scan(&schema); err != nil {
		return fmt.Errorf("name the change channel: %w", err)
	}
	sum := sha256.Sum256([]byte(schema))
	f := &s.changes
	f.channel = "mandate_changes_" + hex.EncodeToString(sum[:8])
	f.origin = ids.New("st")
	f.dsn = dsn
	f.pollEvery = 500 * time.Millisecond
	f.idleCheck = 30 * time.Second
	f.dial = f.connect
	if f.log == nil {
		f.log = slog.Default()
	}
	return nil
}

// listenerAppName is the application_name of the listening connection (visible in
// pg_stat_activity).
const listenerAppName = "mandate-change-listener"

func (f *changeFeed) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(f.dsn)
	if err != nil {
		return nil, errors.New("parse the database URL") // never print the URL: it may hold a password
	}
	cfg.RuntimeParams["application_name"] = listenerAppName
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// listen keeps a connection LISTENing to the change channel until ctx ends, delivering the
// changes of other replicas, and falls back to reading the revocation log while it is down.
func (s *Store) listen(ctx context.Context, cursor int64) {
	f := &s.changes
	reset := []Change{{Kind: KindAgentChanged}}
	down := false
	for ctx.Err() == nil {
		conn, err := f.dial(ctx)
		if err == nil {
			if _, err = conn.Exec(ctx, `LISTEN `+f.channel); err != nil {
				conn.Close(context.Background())
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !down {
				f.log.Warn("the change listener cannot connect to PostgreSQL; reading the revocation log instead", slog.String("error", err.Error()))
				down = true
			}
			cursor = s.catchUp(ctx, cursor)
			f.publish(reset)
			select {
			case <-ctx.Done():
				return
			case <-time.After(f.pollEvery):
			}
			continue
		}
		// Listening: whatever committed before is in the log after cursor; what changed in
		// agents meanwhile is not on record.
		cursor = s.catchUp(ctx, cursor)
		f.publish(reset)
		if down {
			f.log.Info("the change listener is connected again")
			down = false
		}
		err = f.receive(ctx, conn, &cursor)
		conn.Close(context.Background())
		if ctx.Err() != nil {
			return
		}
		f.log.Warn("the change listener lost its connection; reading the revocation log until it is back", slog.String("error", err.Error()))
		down = true
		f.publish(reset)
	}
}

// receive delivers the notifications of other replicas until the connection fails or ctx ends.
func (f *changeFeed) receive(ctx context.Context, conn *pgx.Conn, cursor *int64) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, f.idleCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed() {
				// Quiet for a while: check the connection is alive (a dead peer sends nothing).
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = conn.Ping(pctx)
				cancel()
				if err == nil {
					continue
				}
			}
			return err
		}
		origin, cs := parseChanges(n.Payload)
		for _, c := range cs {
			*cursor = max(*cursor, c.Seq)
		}
		if origin != f.origin {
			f.publish(cs)
		}
	}
}

// catchUp delivers the revocation log entries after cursor (all of them, expired or not) and
// returns the new cursor; a cursor of -1 becomes the log's last seq, delivering nothing. A
// failure leaves the cursor where it was (the next call tries again).
func (s *Store) catchUp(ctx context.Context, cursor int64) int64 {
	if cursor < 0 {
		var last int64
		if err := s.rdb.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM revocations`).Scan(&last); err != nil {
			return cursor
		}
		return last
	}
	for {
		revs, err := s.ListRevocations(ctx, cursor, time.Time{}, defaultRevocationLimit)
		if err != nil {
			return cursor
		}
		cs := make([]Change, len(revs))
		for i, r := range revs {
			cs[i] = Change{Kind: r.Kind, ID: r.ID, Seq: r.Seq}
			cursor = r.Seq
		}
		s.changes.publish(cs)
		if len(revs) < defaultRevocationLimit {
			return cursor
		}
	}
}
