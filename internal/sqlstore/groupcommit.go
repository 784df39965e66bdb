package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// Group commit of standalone events.
//
// AppendEvent is on the hot path of every refusal and of every proxied call (the durable
// "pending" record before forwarding and the completion after), and each append is a durable
// commit: on SQLite with synchronous=FULL an fsync, on PostgreSQL a WAL flush. One writer
// goroutine turns many appends into one commit: it takes the first queued event, then whatever
// else queued while the previous batch committed (at most maxBatch), links them to the chain in
// queue order in one write transaction, and releases each caller when that transaction has
// committed. It never waits on a timer: an idle store commits a lone event at once, and a busy
// one batches exactly what piled up during the last fsync.

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
	ev    audit.Event
	state atomic.Int32
	done  chan error  // buffered: the writer never waits for the caller
	cb    func(error) // AppendEventAsync's callback, instead of done
}

// release tells r's caller how its append ended.
func (r *appendReq) release(err error) {
	if r.cb != nil {
		r.cb(err)
		return
	}
	r.done <- err
}

// committer is the one writer goroutine of a Store and the queue in front of it.
type committer struct {
	reqs    chan *appendReq
	mu      sync.RWMutex // held for reading while sending, for writing to close reqs
	closed  bool
	stopped chan struct{}
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

// enqueue hands ev to the writer and waits for its batch to commit. A caller whose context ends
// while its event is still queued takes it back (it is never written); one whose event is
// already in a batch being committed returns at once, and the batch goes on unchanged (the
// event may then be on record though the caller gave up: a record without an action, never an
// action without a record).
func (s *Store) enqueue(ctx context.Context, ev audit.Event) error {
	r := &appendReq{ev: ev, done: make(chan error, 1)}
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

// AppendEventAsync queues ev like AppendEvent but does not wait for its commit: done, when not
// nil, is called once with the outcome (nil: durable) from the writer goroutine, so it must not
// block. For records whose caller has nothing left to decide (a proxied call's completion, after
// the response went out). ctx gives the request fields (audit.Origin) only; it cannot cancel
// the append. AppendEventAsync blocks only while the queue is full.
func (s *Store) AppendEventAsync(ctx context.Context, ev audit.Event, done func(error)) {
	if ev.ID == "" {
		ev.ID = ids.New("evt")
	}
	ev.Stamp(ctx)
	if done == nil {
		done = func(error) {}
	}
	action, id := ev.Action, ev.ID
	r := &appendReq{ev: ev, cb: func(err error) {
		if err != nil {
			err = fmt.Errorf("append audit event %s %s: %w", action, id, err)
		}
		done(err)
	}}
	gc := s.gc
	gc.mu.RLock()
	defer gc.mu.RUnlock()
	if gc.closed {
		r.release(errStoreClosed)
		return
	}
	gc.reqs <- r
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

// commitBatch writes the batch's events, in queue order, in one transaction. An event whose
// insert fails (a reused id, say) is refused alone: the transaction is rolled back and retried
// without it, the others keeping their order. A failure that is no one event's (begin, the
// chain lock, commit) refuses every event of the batch; none is retried, so a batch is never
// committed in a different order or twice.
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
	for len(pending) > 0 {
		bad := -1
		err := s.writeTx(context.Background(), func(tx *sql.Tx) error {
			tail, err := readTail(context.Background(), tx)
			if err != nil {
				return err
			}
			for i, r := range pending {
				ev := r.ev // a copy: a rolled-back attempt leaves nothing behind
				if err := insertEvent(context.Background(), tx, &tail, &ev); err != nil {
					bad = i
					return err
				}
			}
			return nil
		})
		if err == nil {
			for _, r := range pending {
				r.release(nil)
			}
			return
		}
		if bad < 0 {
			for _, r := range pending {
				r.release(err)
			}
			return
		}
		pending[bad].release(err)
		pending = append(pending[:bad:bad], pending[bad+1:]...)
	}
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
}
