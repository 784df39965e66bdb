package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandate-dev/mandate/client"
)

// A task's token is renewed by exchanging it, while it is still valid, for a fresh one of the
// same task (RFC 8693; proof by the task's key). A token that has expired proves nothing and the
// server refuses it, so renewing on demand — when the tool's next request arrives — loses the
// task after any idle pause longer than a token's life. The keeper renews in the background
// instead, for the task's whole life:
//
//   - at about two thirds of each token's life, a little earlier at random (jitter, so that many
//     sidecars started together do not renew together);
//   - on a transient failure (network, 5xx, 429) again with exponential backoff, as long as the
//     token is valid;
//   - never with an expired token.
//
// It stops when the server refuses (the task ended, it or its grant was revoked), when the task's
// TTL is over, or when the token expired before a renewal got through (the network was down, or
// the machine slept, for longer than a token's life). Then the sidecar answers every request 401
// with the reason. A new token of the same task cannot be had any other way: the grant token
// starts a new task (new authority: its own budget and TTL), which a person reading the trail
// should see as a new run, so the sidecar does not do it behind the tool's back.
//
// Times are wall-clock times (the token's exp is): a monotonic timer does not count the time a
// machine sleeps, so no single wait is longer than maxWait, and each request checks the wall clock.

const (
	renewAtFraction = 2.0 / 3 // of a token's life
	renewJitter     = 0.1     // up to this fraction of its life earlier
	retryFirst      = time.Second
	retryMax        = 30 * time.Second
	attemptTimeout  = 30 * time.Second
	maxWait         = time.Minute // wake at least this often to look at the wall clock
	minRetry        = 200 * time.Millisecond
	// The last retry is planned this much before the token's expiry as the sidecar knows it (its
	// own clock, from when the answer arrived): the server's clock and the round trip may make the
	// token expire earlier there. A tenth of the token's life, at most expiryMarginMax.
	expiryMargin    = 0.1
	expiryMarginMax = 30 * time.Second
)

// CodeTokenLost is the error code of the sidecar's 401 once the task's token is lost (RFC 6750's).
const CodeTokenLost = "invalid_token"

// LostError says why the sidecar no longer holds a usable token of its task.
type LostError struct {
	TaskID string
	Reason string // a sentence: what happened and what to do
	Err    error  // the cause: the server's refusal, client.ErrTokenExpired, …
}

func (e *LostError) Error() string {
	return fmt.Sprintf("the token of task %s is lost: %s", e.TaskID, e.Reason)
}

func (e *LostError) Unwrap() error { return e.Err }

// keeper keeps a task's token fresh in the background.
type keeper struct {
	task    *client.Task
	now     func() time.Time
	notices io.Writer
	refused atomic.Int64 // requests answered 401 because the token was lost
	renewed atomic.Int64 // renewals that got through

	mu      sync.Mutex
	lost    *LostError
	failure error // the latest failed renewal, until one gets through
}

func newKeeper(task *client.Task, now func() time.Time, notices io.Writer) *keeper {
	return &keeper{task: task, now: func() time.Time { return now().Round(0) }, notices: notices}
}

// err returns the loss, if the token is lost; it notices an expiry the background loop has not
// seen yet (a request that arrives first after the machine woke up).
func (k *keeper) err() error {
	k.mu.Lock()
	lost := k.lost
	k.mu.Unlock()
	if lost != nil {
		return lost
	}
	if tok := k.task.Current(); !k.now().Before(tok.ExpiresAt) {
		return k.expired(tok)
	}
	return nil
}

// failed records the latest failed renewal (nil: one got through), for the reason of a loss.
func (k *keeper) failed(err error) {
	k.mu.Lock()
	k.failure = err
	k.mu.Unlock()
}

// lose records the first reason the token was lost (and says it once on Notices); later calls
// return that first one.
func (k *keeper) lose(err error) *LostError {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lost != nil {
		return k.lost
	}
	var le *LostError
	if !errors.As(err, &le) {
		le = &LostError{TaskID: k.task.ID, Reason: reason(err), Err: err}
	}
	k.lost = le
	if k.notices != nil {
		fmt.Fprintf(k.notices, "mandate sidecar: %s\n", le.Error())
	}
	return le
}

// confirm asks the server, by renewing the token now, whether a token the proxy just refused
// (401 invalid_token) is dead for good: when the task ended or was revoked while the token was
// still valid, the renewal is refused, the token is lost, and the refused call counts, so that
// exec says so. A renewal that gets through means the refusal was passing (a token that expired
// as the call went out); a transient failure leaves the background loop to it.
func (k *keeper) confirm(ctx context.Context) {
	if k.err() != nil {
		k.refused.Add(1)
		return
	}
	err := k.task.Refresh(ctx)
	switch {
	case err == nil:
		k.renewed.Add(1)
	case errors.Is(err, client.ErrTokenExpired):
		k.expired(k.task.Current())
		k.refused.Add(1)
	case permanent(err):
		k.lose(err)
		k.refused.Add(1)
	}
}

// expired loses the token tok to its expiry.
func (k *keeper) expired(tok client.TaskToken) *LostError {
	at := tok.ExpiresAt.UTC().Format(time.RFC3339)
	if !tok.TaskExpiresAt.IsZero() && !tok.ExpiresAt.Before(tok.TaskExpiresAt) {
		return k.lose(&LostError{TaskID: k.task.ID, Err: client.ErrTokenExpired,
			Reason: "the task's TTL ran out at " + at + "; start a new task to go on"})
	}
	k.mu.Lock()
	last := k.failure
	k.mu.Unlock()
	why, cause := "mandate could not be reached (the network or the server was down), or this machine slept, for longer than the token's life", client.ErrTokenExpired
	if last != nil {
		why += " (last attempt: " + last.Error() + ")"
		cause = fmt.Errorf("%w: %w", cause, last)
	}
	return k.lose(&LostError{TaskID: k.task.ID, Err: cause,
		Reason: "it expired at " + at + " before it could be renewed: " + why +
			". A task's token is renewed only while it is valid, so this task cannot go on; start a new one"})
}

// fail loses the token to an error of a request's own renewal (client.Task.Token).
func (k *keeper) fail(err error) *LostError {
	if errors.Is(err, client.ErrTokenExpired) {
		return k.expired(k.task.Current())
	}
	return k.lose(err)
}

// reason is the sentence for a renewal that failed for good.
func reason(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		desc := ce.Description
		if desc == "" {
			desc = ce.Code
		}
		return fmt.Sprintf("the server refused to renew it: %s (%s). The task has ended, or it or its grant was revoked; start a new task to go on", desc, ce.Code)
	}
	return "renewing it failed: " + err.Error()
}

// permanent reports whether a failed renewal will fail again: the server said no (a 4xx other
// than 429). Network errors, 5xx and 429 are worth retrying while the token is valid.
func permanent(err error) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Status >= 400 && ce.Status < 500 && ce.Status != http.StatusTooManyRequests
}

// run renews the task's token until ctx ends or the token is lost.
func (k *keeper) run(ctx context.Context) {
	var (
		failures int
		retryAt  time.Time // when to try again after a failure
		jittered string    // the token the jitter was drawn for
		jitter   time.Duration
	)
	for {
		if k.err() != nil {
			return
		}
		tok := k.task.Current()
		now := k.now()
		life := tok.ExpiresAt.Sub(tok.IssuedAt)
		if tok.AccessToken != jittered {
			jittered, jitter = tok.AccessToken, time.Duration(rand.Float64()*renewJitter*float64(life))
			failures = 0 // renewed (by the loop, or by a request's own refresh)
			k.failed(nil)
		}
		var at time.Time
		switch {
		case !tok.TaskExpiresAt.IsZero() && !tok.ExpiresAt.Before(tok.TaskExpiresAt):
			at = tok.ExpiresAt // this token lasts as long as the task: nothing to renew
		case failures > 0:
			at = retryAt
		default:
			at = tok.IssuedAt.Add(time.Duration(renewAtFraction*float64(life)) - jitter)
		}
		if !now.Before(tok.ExpiresAt) {
			k.expired(tok)
			return
		}
		if wait := at.Sub(now); wait > 0 {
			t := time.NewTimer(min(wait, maxWait))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, min(attemptTimeout, tok.ExpiresAt.Sub(now)))
		err := k.task.Refresh(actx)
		cancel()
		switch {
		case err == nil:
			k.renewed.Add(1)
			continue
		case ctx.Err() != nil:
			return
		case errors.Is(err, client.ErrTokenExpired):
			k.expired(tok)
			return
		case permanent(err):
			k.lose(err)
			return
		}
		failures++
		k.failed(err)
		now = k.now()
		retryAt = now.Add(backoff(failures))
		deadline := tok.ExpiresAt.Add(-min(time.Duration(expiryMargin*float64(life)), expiryMarginMax))
		if left := deadline.Sub(now); !retryAt.Before(deadline) {
			retryAt = now.Add(max(left/2, minRetry)) // one more try before it expires
		}
		if k.notices != nil {
			fmt.Fprintf(k.notices, "mandate sidecar: renewing the token of task %s failed (%v); trying again in %s, it expires at %s\n",
				k.task.ID, err, retryAt.Sub(now).Round(100*time.Millisecond), tok.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
}

// backoff is the wait after the n-th failure in a row: doubling from retryFirst up to retryMax,
// ±20% at random.
func backoff(n int) time.Duration {
	d := retryMax
	if n < 16 {
		d = min(retryFirst<<(n-1), retryMax)
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
