package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/cpuslot"
	"github.com/mandate-dev/mandate/internal/token"
)

// Group commit.
//
// Every durable write on the hot path goes through one writer goroutine: a token's issue (its
// single-use ids and its audit event), an exchange's new task, a refusal, a proxied call's
// pending record and completion. Each is a durable commit of its own when done alone — on
// SQLite with synchronous=FULL an fsync, on PostgreSQL a WAL flush, and there under the chain
// lock that every replica's audited writes take. The writer turns many of them into one commit:
// it takes the first queued write, then whatever else queued while the previous batch committed
// (at most maxBatch), runs them in queue order in one write transaction — linking their events
// to the chain in that order — and releases each caller when that transaction has committed
// (nothing is answered before its record is durable: invariant 6). It never waits on a timer:
// an idle store commits a lone write at once, and a busy one batches exactly what piled up
// during the last commit.
//
// A write is a simpleWrite (see batchrows.go): single-use ids, events, perhaps a task. The
// writer does a batch with a few multi-row statements. A write that is refused (a replayed jti, a
// grant revoked meanwhile) has written nothing (see refuse); it is answered at once and the
// batch goes on. Any other error is the database's: the transaction is rolled back and the batch
// retried one write at a time, and then without the write that failed, so one bad write never
// takes the others down and no batch is committed in a different order or twice.

// maxBatch bounds the events committed together, so one transaction stays short and a caller
// queued behind a burst waits for at most a few batches.
const maxBatch = 256

// appendQueue is the size of the queue in front of the writer; callers block (or give up with
// their context) when it is full.
const appendQueue = 4 * maxBatch

// Request states: a queued request is either taken by the writer or cancelled by its caller,
// whichever happens first.
const (
	reqQueued int32 = iota
	reqTaken
	reqCancelled
)

type appendReq struct {
	simple  *simpleWrite // the write (see batchrows.go)
	refused error        // its refusal in the last attempt, nil when written
	state   atomic.Int32
	done    chan error // buffered: the writer never waits for the caller
}

// release tells r's caller how its append ended.
func (r *appendReq) release(err error) {
	r.done <- err
}

// committer is the one writer goroutine of a Store and the queue in front of it.
type committer struct {
	reqs    chan *appendReq
	mu      sync.RWMutex // held for reading while sending, for writing to close reqs
	closed  bool
	stopped chan struct{}
	// conn is the writer's own connection on PostgreSQL. Taking one from the pool for every
	// batch put the writer in line behind every request's reads (database/sql hands a freed
	// connection to a waiter at random), and with it every write of the process: exchanges,
	// which read several rows each, fell to a third. On SQLite the pool is the writer's single
	// connection already, which other writes share.
	conn *sql.Conn
	// batchStarted, when set (by tests, before the first append), is called with each batch's
	// size as the writer starts committing it.
	batchStarted func(n int)
}

func (s *Store) startCommitter() {
	s.gc = &committer{reqs: make(chan *appendReq, appendQueue), stopped: make(chan struct{})}
	go s.runCommitter()
}

// errStoreClosed refuses appends after Close.
var errStoreClosed = errors.New("the store is closed")

// enqueue hands ev to the writer and waits for its batch to commit.
func (s *Store) enqueue(ctx context.Context, ev audit.Event) error {
	return s.submitSimple(ctx, &simpleWrite{evs: []audit.Event{ev}})
}

// submitSimple hands sw to the writer and waits for its batch to commit. A caller whose context
// ends while its write is still queued takes it back (it is never run); one whose write is
// already in a batch being committed returns at once, and the batch goes on unchanged (its event
// may then be on record though the caller gave up: a record without an action, never an action
// without a record).
func (s *Store) submitSimple(ctx context.Context, sw *simpleWrite) error {
	return s.wait(ctx, &appendReq{simple: sw, done: make(chan error, 1)})
}

func (s *Store) wait(ctx context.Context, r *appendReq) error {
	gc := s.gc
	gc.mu.RLock()
	if gc.closed {
		gc.mu.RUnlock()
		return errStoreClosed
	}
	select {
	case gc.reqs <- r:
		gc.mu.RUnlock()
	case <-ctx.Done():
		gc.mu.RUnlock()
		return ctx.Err()
	}
	// The wait needs no CPU: the request's slot goes to one that does (see package cpuslot).
	back := cpuslot.Yield(ctx)
	defer back()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqCancelled) {
			return ctx.Err()
		}
		return fmt.Errorf("gave up waiting for the audit record's commit (it may be on record): %w", ctx.Err())
	}
}

// runCommitter is the writer loop: one batch at a time until Close, then what is left queued.
func (s *Store) runCommitter() {
	gc := s.gc
	defer close(gc.stopped)
	batch := make([]*appendReq, 0, maxBatch)
	for r := range gc.reqs {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-gc.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.commitBatch(batch)
	}
}

// batchTimeout bounds one batch's transaction, so that a database that stops answering fails
// the batch's callers instead of holding them and every caller queued behind them.
const batchTimeout = 10 * time.Second

// commitBatch runs the batch's writes, in queue order, in one transaction (see the top of the file).
func (s *Store) commitBatch(batch []*appendReq) {
	pending := batch[:0:0]
	for _, r := range batch {
		if r.state.CompareAndSwap(reqQueued, reqTaken) {
			pending = append(pending, r)
		}
	}
	if f := s.gc.batchStarted; f != nil && len(pending) > 0 {
		f(len(pending))
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	// rowsOK is cleared when a multi-row statement fails: the retry then runs every write on
	// its own, so that the failing one is found and the others go on.
	rowsOK := true
	for len(pending) > 0 {
		bad, rowsFailed := -1, false
		db, err := s.writerDB(ctx)
		if err == nil {
			err = s.txOn(ctx, db, true, func(tx *sql.Tx) error {
				w := &batchWriter{ctx: ctx, tx: tx, s: s}
				if err := w.readTail(); err != nil {
					return err
				}
				for i := 0; i < len(pending); i++ {
					r := pending[i]
					if rowsOK {
						if err := w.writeSimple(pending); err != nil {
							rowsOK, rowsFailed = false, true
							return err
						}
						break
					}
					tail := w.tail
					r.refused = r.run(w)
					if r.refused == nil {
						continue
					}
					if _, ok := r.refused.(refusal); ok && w.tail == tail {
						continue
					}
					bad = i
					return r.refused
				}
				return nil
			})
		}
		// The database did not answer (a lost connection, a deadline): no one write is to blame,
		// and retrying the others one at a time would only meet the same outage again.
		down := err != nil && unreachable(ctx, err)
		if down {
			bad, rowsFailed = -1, false
		}
		if err != nil && s.gc.conn != nil && (bad < 0 || down) {
			s.gc.conn.Close() // it may be broken: the next batch takes a fresh one
			s.gc.conn = nil
		}
		if err != nil && rowsFailed {
			continue // retry once, one write at a time
		}
		if err == nil {
			for _, r := range pending {
				if rf, ok := r.refused.(refusal); ok {
					r.release(rf.err)
					continue
				}
				r.release(nil)
			}
			return
		}
		if bad < 0 {
			if !errors.Is(err, audit.ErrUnavailable) {
				// Beginning, locking or committing failed (the writer's own connection broke,
				// say, where the pool would have tried another): nothing of the batch is on
				// record, so neither may what it records be.
				err = fmt.Errorf("commit a batch of %d writes: %w: %w", len(pending), audit.ErrUnavailable, err)
			}
			for _, r := range pending {
				r.release(err)
			}
			return
		}
		pending[bad].release(err)
		pending = append(pending[:bad:bad], pending[bad+1:]...)
	}
}

// run runs r's write on its own, when multi-row statements failed.
func (r *appendReq) run(w *batchWriter) error {
	sw := r.simple
	if sw.task != nil {
		if err := w.runTask(sw.task); err != nil {
			return err
		}
	}
	if err := w.use(sw.uses); err != nil {
		return err
	}
	if sw.task != nil {
		if err := w.insertTask(sw.task); err != nil {
			return err
		}
	}
	for _, e := range sw.evs { // a copy: a retried batch starts from the original
		if sw.success {
			e.Outcome = audit.OutcomeSuccess
		}
		if err := w.append(&e); err != nil {
			return err
		}
	}
	return nil
}

// unreachable reports whether err means the database could not be reached or did not answer in
// time — not an answer it gave about one write (a constraint, a full disk on one insert).
func unreachable(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, driver.ErrBadConn) || errors.As(err, &ne)
}

// writerDB is what the writer begins its transactions on: its own connection on PostgreSQL.
func (s *Store) writerDB(ctx context.Context) (beginner, error) {
	if s.dialect != DialectPostgres {
		return s.db, nil
	}
	if s.gc.conn == nil {
		c, err := s.db.Conn(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect the audit writer: %w: %w", audit.ErrUnavailable, err)
		}
		s.gc.conn = c
	}
	return s.gc.conn, nil
}

// refusal marks a write's answer that is not the database's failure: the write wrote nothing and
// the batch goes on without it.
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

// refuse wraps err as a refusal. Only a write that has written nothing may return one.
func refuse(err error) error { return refusal{err} }

// refuseIf makes err a refusal when it is one of the domain's answers in answers (a query that
// found nothing, say), and leaves it the database's error otherwise.
func refuseIf(err error, answers ...error) error {
	for _, a := range answers {
		if errors.Is(err, a) {
			return refuse(err)
		}
	}
	return err
}

// batchWriter is what a batch is written with: the batch's transaction and the end of the audit
// chain, which moves as the batch's ops append.
type batchWriter struct {
	ctx  context.Context
	tx   *sql.Tx
	tail chainTail
	s    *Store
}

func (w *batchWriter) readTail() error {
	err := w.s.stmt(w.ctx, w.tx, stmtReadTail).QueryRowContext(w.ctx).Scan(&w.tail.seq, &w.tail.hash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read end of audit chain: %w: %w", audit.ErrUnavailable, err)
	}
	return nil
}

// append links ev to the chain as it is (its Outcome kept).
func (w *batchWriter) append(ev *audit.Event) error {
	_, err := w.s.stmt(w.ctx, w.tx, stmtInsertEvent).ExecContext(w.ctx, linkEvent(&w.tail, ev)...)
	return movedTail(&w.tail, ev, err)
}

// appendSuccess appends ev as the record of a change this write made.
func (w *batchWriter) appendSuccess(ev *audit.Event) error {
	ev.Outcome = audit.OutcomeSuccess
	return w.append(ev)
}

// use uses up every id in uses; if one was used before, it takes back the ones it used and
// refuses with dpop.ErrReplay (wrapped), so the write has written nothing.
func (w *batchWriter) use(uses []token.SingleUse) error {
	for i, u := range uses {
		err := w.s.useStmt(w.ctx, w.s.stmt(w.ctx, w.tx, stmtUse), u.ID, u.ExpiresAt)
		if err == nil {
			continue
		}
		if !errors.Is(err, dpop.ErrReplay) {
			return err
		}
		for _, done := range uses[:i] {
			if _, derr := w.s.stmt(w.ctx, w.tx, stmtUnuse).ExecContext(w.ctx, done.ID); derr != nil {
				return derr
			}
		}
		return refuse(err)
	}
	return nil
}

// close stops taking appends, commits what is queued and waits for the writer to finish.
func (gc *committer) close() {
	gc.mu.Lock()
	if !gc.closed {
		gc.closed = true
		close(gc.reqs)
	}
	gc.mu.Unlock()
	<-gc.stopped
	if gc.conn != nil {
		gc.conn.Close()
		gc.conn = nil
	}
}
