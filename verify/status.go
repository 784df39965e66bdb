package verify

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrRevoked is wrapped by StatusSource errors for a revoked agent, grant, task or token.
var ErrRevoked = errors.New("revoked")

// StatusSource tells whether a verified caller is still allowed. Check returns nil, an error
// wrapping ErrRevoked (Verify answers 401 invalid_token "revoked"), or another error when the
// status cannot be known (Verify answers 503: it fails closed).
type StatusSource interface {
	Check(ctx context.Context, c *Caller) error
}

// RevocationFeed is a StatusSource over the issuer's revocation feed,
// GET {feedURL}?after=<cursor>, which answers
//
//	{"revocations": [{"kind": "agent"|"grant"|"task"|"token"|"key", "id": "…", "exp": <unix seconds, 0 = never>}, …],
//	 "cursor": <int>, "more": <bool>}
//
// with the entries after the cursor, oldest first, one page at a time. The feed keeps the set of
// revoked agents, grants, tasks and tokens it has read, and reads the entries after its cursor
// (every page, until more is false) synchronously, one request at a time for all concurrent
// callers, once its copy is older than maxAge (0 means 1s). Entries of unknown kinds are
// ignored. An entry is dropped once its exp has passed by 5 minutes, so that a token a Verifier
// still accepts within its Leeway after exp stays refused (the feed a Verifier makes for itself
// when Config.Status is nil keeps entries for Leeway plus a minute when that is longer).
//
// Check refuses a caller when its token (jti), its grant, its task or the task of any actor in
// its chain, or any agent in its chain, its client_id or its sub when that is an agent, is in
// the set. While the feed cannot be read the last copy stays in use for at most MaxStale (default
// 1m) after it was last brought up to date; then Check fails closed until the feed can be read
// again. hc nil means http.DefaultClient.
//
// By default the feed also follows the issuer's stream of revocations (server-sent events on
// the same URL, see stream.go): while the stream is up, a revocation reaches the set as soon as
// the issuer commits it (tens of milliseconds) and Check needs no poll; when it is down or the
// issuer does not offer it, Check polls as described above. WithoutStream turns it off.
func RevocationFeed(feedURL string, hc *http.Client, maxAge time.Duration, opts ...Option) StatusSource {
	if hc == nil {
		hc = http.DefaultClient
	}
	if maxAge <= 0 {
		maxAge = time.Second
	}
	sep := "?"
	if strings.Contains(feedURL, "?") {
		sep = "&"
	}
	f := &feed{url: feedURL + sep + "after=", hc: hc, maxAge: maxAge, o: buildOptions(opts)}
	if !f.o.noStream {
		f.stream = newStream(f)
	}
	return f
}

// Close ends the feed's stream, if one is open; the feed then only polls. The StatusSource
// RevocationFeed returns implements io.Closer: a program that drops a feed before it exits may
// close it (an unused stream closes by itself after a minute without a Check).
func (f *feed) Close() error {
	f.stream.close()
	return nil
}

// Kinds of revocation feed entries.
const (
	kindAgent = iota
	kindGrant
	kindTask
	kindToken
	kindKey // an agent key, by its thumbprint: tokens bound to it (cnf.jkt) are refused
	numKinds
)

func kindOf(s string) (int, bool) {
	switch s {
	case "agent":
		return kindAgent, true
	case "grant":
		return kindGrant, true
	case "task":
		return kindTask, true
	case "token":
		return kindToken, true
	case "key":
		return kindKey, true
	}
	return 0, false
}

type feed struct {
	url    string // ends in after=
	hc     *http.Client
	maxAge time.Duration
	o      options

	snap    atomic.Pointer[feedSnapshot]
	applyMu sync.Mutex // held while a new snapshot is made from the last one
	sf      singleflight.Group
	stream  *stream // nil when the feed only polls

	mu         sync.Mutex
	failedAt   time.Time // of the last failed fetch; no new attempt for maxAge after it
	lastFailed error
}

// feedSnapshot is an immutable copy of the revocation set; a refresh that changes it stores a
// new one.
type feedSnapshot struct {
	sets   [numKinds]map[string]int64 // id -> exp (unix seconds, 0 = never)
	cursor int64
	// fetched is when the request that found no more pages started: the set holds every
	// revocation published before it. Zero until the feed has been read to the end once.
	fetched time.Time
	// nextExp is the earliest nonzero exp in sets, 0 when none: nothing to drop before it.
	nextExp int64
}

type feedPage struct {
	Revocations []feedEntry `json:"revocations"`
	Cursor      int64       `json:"cursor"`
	More        bool        `json:"more"`
}

func (f *feed) Check(ctx context.Context, c *Caller) error {
	now := f.o.now()
	f.stream.use()
	s := f.snap.Load()
	if s == nil || now.Sub(s.fetched) >= f.maxAge {
		fresh, err := f.refresh(ctx, now)
		if err == nil {
			s = fresh
		} else {
			// A failed refresh may still have stored the pages it read.
			s = f.snap.Load()
			if s == nil || s.fetched.IsZero() || now.Sub(s.fetched) >= f.o.maxStale {
				return fmt.Errorf("verify: revocation status unknown: %w", err)
			}
			// else keep using the last copy for a little while
		}
	}
	return s.check(c)
}

func (s *feedSnapshot) check(c *Caller) error {
	if agents := s.sets[kindAgent]; len(agents) > 0 {
		// Every agent in the delegation chain: revoking one stops every token derived from it.
		for i := range c.Chain {
			if id := c.Chain[i].AgentID; contains(agents, id) {
				return fmt.Errorf("%w: agent %s is revoked", ErrRevoked, id)
			}
		}
		for _, id := range [...]string{c.AgentID, c.ClientID, c.Subject} {
			if !isPrincipal(id) && contains(agents, id) {
				return fmt.Errorf("%w: agent %s is revoked", ErrRevoked, id)
			}
		}
	}
	if contains(s.sets[kindGrant], c.Grant) {
		return fmt.Errorf("%w: grant %s is revoked", ErrRevoked, c.Grant)
	}
	if tasks := s.sets[kindTask]; len(tasks) > 0 {
		// Ending a task ends its children: every task in the chain.
		if contains(tasks, c.Task) {
			return fmt.Errorf("%w: task %s has ended or was revoked", ErrRevoked, c.Task)
		}
		for i := range c.Chain {
			if id := c.Chain[i].Task; contains(tasks, id) {
				return fmt.Errorf("%w: task %s has ended or was revoked", ErrRevoked, id)
			}
		}
	}
	if contains(s.sets[kindToken], c.JTI) {
		return fmt.Errorf("%w: token %s is revoked", ErrRevoked, c.JTI)
	}
	if contains(s.sets[kindKey], c.JKT) {
		return fmt.Errorf("%w: the key %s the token is bound to is revoked", ErrRevoked, c.JKT)
	}
	return nil
}

func contains(set map[string]int64, id string) bool {
	if id == "" || len(set) == 0 {
		return false
	}
	_, ok := set[id]
	return ok
}

func (f *feed) refresh(ctx context.Context, now time.Time) (*feedSnapshot, error) {
	f.mu.Lock()
	if !f.failedAt.IsZero() && now.Sub(f.failedAt) < f.maxAge {
		err := f.lastFailed
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	ch := f.sf.DoChan("feed", func() (any, error) {
		// A caller that saw a stale copy may arrive just after another refresh finished: use
		// that one rather than fetch again.
		if s := f.snap.Load(); s != nil && now.Sub(s.fetched) < f.maxAge {
			return s, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.o.timeout)
		defer cancel()
		s, err := f.catchUp(fctx)
		f.mu.Lock()
		if err != nil {
			f.failedAt, f.lastFailed = f.o.now(), err
		} else {
			f.failedAt, f.lastFailed = time.Time{}, nil
		}
		f.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return s, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*feedSnapshot), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// catchUp reads the feed from the stored cursor, page after page until more is false, storing
// each page's entries as it comes (more revocations are never worse); only the last page marks
// the set complete as of the time its request started. Runs one at a time (singleflight); the
// stream (stream.go) may store entries meanwhile.
func (f *feed) catchUp(ctx context.Context) (*feedSnapshot, error) {
	for {
		// Stamp with the time the request started: a revocation published while it was in
		// flight must not be considered covered.
		started := f.o.now()
		var after int64
		if old := f.snap.Load(); old != nil {
			after = old.cursor
		}
		var page feedPage
		err := getJSON(ctx, f.hc, f.url+strconv.FormatInt(after, 10), "application/json", &page)
		if err == nil && page.More && page.Cursor <= after {
			err = fmt.Errorf("the cursor did not advance past %d although more pages follow", after)
		}
		if err != nil {
			return nil, fmt.Errorf("verify: fetching the revocation feed: %w", err)
		}
		var complete time.Time
		if !page.More {
			complete = started
		}
		next := f.apply(page.Revocations, page.Cursor, started, complete)
		if !page.More {
			return next, nil
		}
	}
}

// feedEntry is one entry of the feed, in a page or a stream event.
type feedEntry struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Exp  int64  `json:"exp"`
}

// apply adds entries, read up to cursor, to the set and stores the new snapshot, which it
// returns. complete, unless zero, is a time the set is known to hold every revocation published
// before. Entries whose exp is past retention at now are dropped.
func (f *feed) apply(entries []feedEntry, cursor int64, now, complete time.Time) *feedSnapshot {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	next := &feedSnapshot{}
	old := f.snap.Load()
	if old != nil {
		*next = *old // the maps stay shared until one changes
	}
	var cloned [numKinds]bool
	changed := old == nil
	cutoff := now.Unix() - int64(f.o.retain/time.Second) // entries with exp before it are dropped
	for _, e := range entries {
		kind, known := kindOf(e.Kind)
		if !known || e.ID == "" || (e.Exp != 0 && e.Exp < cutoff) {
			continue
		}
		set := next.sets[kind]
		old, had := set[e.ID]
		exp := e.Exp
		if had && (old == 0 || (exp != 0 && old > exp)) {
			exp = old // keep the later of the two: 0 (never) is the latest
		}
		if had && exp == old {
			continue
		}
		if !cloned[kind] {
			set = maps.Clone(set)
			if set == nil {
				set = make(map[string]int64)
			}
			next.sets[kind], cloned[kind] = set, true
		}
		set[e.ID] = exp
		changed = true
		if exp != 0 && (next.nextExp == 0 || exp < next.nextExp) {
			next.nextExp = exp
		}
	}
	if cursor > next.cursor {
		next.cursor, changed = cursor, true
	}
	if complete.After(next.fetched) {
		next.fetched, changed = complete, true
		next.prune(cutoff)
	}
	if !changed {
		return old
	}
	f.snap.Store(next)
	return next
}

// prune drops the entries whose exp is before cutoff, copying the sets it changes.
func (s *feedSnapshot) prune(cutoff int64) {
	if s.nextExp == 0 || s.nextExp >= cutoff {
		return
	}
	s.nextExp = 0
	for k, set := range s.sets {
		for _, exp := range set {
			if exp != 0 && exp < cutoff {
				kept := make(map[string]int64, len(set))
				for id, exp := range set {
					if exp == 0 || exp >= cutoff {
						kept[id] = exp
					}
				}
				set = kept
				s.sets[k] = kept
				break
			}
		}
		for _, exp := range set {
			if exp != 0 && (s.nextExp == 0 || exp < s.nextExp) {
				s.nextExp = exp
			}
		}
	}
}
