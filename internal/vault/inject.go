package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
)

// ErrNoCredential is returned (wrapped in an apperr Internal error) when an upstream has no
// usable credential: no secret set, or the upstream's token endpoint refused.
var ErrNoCredential = errors.New("no usable upstream credential")

// Inject sets u's credential on the outgoing request req (whose URL is the upstream's). The
// caller has stripped whatever credentials the agent sent. Errors never contain a secret.
func (s *Service) Inject(ctx context.Context, u Upstream, req *http.Request) error {
	switch u.Auth {
	case AuthOAuth2Refresh, AuthOAuth2ClientCredentials:
		tok, err := s.accessToken(ctx, u)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+string(tok.Reveal()))
		return nil
	}
	sec, err := s.static(ctx, u.Name)
	if err != nil {
		return err
	}
	v := string(sec.Reveal())
	switch u.Auth {
	case AuthBearer:
		req.Header.Set("Authorization", "Bearer "+v)
	case AuthHeader:
		req.Header.Set(u.Param, v)
	case AuthQuery:
		req.URL.RawQuery = setQuery(req.URL.RawQuery, u.Param, v)
	case AuthBasic:
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString(sec.Reveal()))
	default:
		return fmt.Errorf("inject %s: unknown auth kind %q", u.Name, u.Auth)
	}
	return nil
}

// setQuery drops every parameter named name from the raw query and appends name=value,
// leaving the other parameters as they were sent (order and encoding).
func setQuery(raw, name, value string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, _, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name || k == name {
			continue
		}
		b.WriteString(part)
		b.WriteByte('&')
	}
	b.WriteString(url.QueryEscape(name))
	b.WriteByte('=')
	b.WriteString(url.QueryEscape(value))
	return b.String()
}

func noCredential(name, why string) error {
	return apperr.Wrap(ErrNoCredential, apperr.Internal, "upstream_credential",
		"upstream %s has no usable credential (%s): an admin sets it with mandate upstream set-secret %s", name, why, name)
}

// static returns the opened static credential of an upstream, cached for a few seconds.
func (s *Service) static(ctx context.Context, name string) (Secret, error) {
	k := secretKey{name, SecretCredential}
	now := s.cfg.Now()
	s.mu.Lock()
	c, ok := s.secrets[k]
	s.mu.Unlock()
	if ok && now.Sub(c.at) < secretTTL && now.Sub(c.at) >= 0 {
		return c.s, nil
	}
	sec, err := s.open(ctx, name, SecretCredential)
	if err != nil {
		return Secret{}, err
	}
	s.mu.Lock()
	s.secrets[k] = cachedSecret{s: sec, at: now}
	s.mu.Unlock()
	return sec, nil
}

// open reads and opens one secret.
func (s *Service) open(ctx context.Context, name, kind string) (Secret, error) {
	sealed, _, _, err := s.cfg.Store.GetSecret(ctx, name, kind)
	if errors.Is(err, ErrNotFound) {
		return Secret{}, noCredential(name, "no "+kind+" is set")
	}
	if err != nil {
		return Secret{}, fmt.Errorf("read %s of %s: %w", kind, name, err)
	}
	plain, err := s.env.Open(name, kind, sealed)
	if err != nil {
		return Secret{}, fmt.Errorf("open %s of %s: %w", kind, name, err)
	}
	return NewSecret(plain), nil
}

// tokenState is one upstream's OAuth access token in this process. mu makes refreshes
// singleflight: the first caller that finds the token stale refreshes while the others wait
// for its result.
type tokenState struct {
	mu        sync.Mutex
	token     Secret
	expiresAt time.Time
	obtained  time.Time // when this process got the token (from the upstream or the store)
	checked   time.Time // when the store was last read for it
}

// defaultTokenTTL is how long an access token whose lifetime the upstream did not say is used.
const defaultTokenTTL = time.Hour

// fresh reports whether the token is still worth using: it is renewed tokenMargin before it
// expires, or halfway through its known life when that is shorter (a 2 s token would otherwise
// never be fresh and every call would refresh).
func (t *tokenState) fresh(now time.Time) bool {
	margin := min(tokenMargin, t.expiresAt.Sub(t.obtained)/2)
	return !t.token.Empty() && now.Before(t.expiresAt.Add(-margin))
}

// accessToken returns a current access token for an OAuth upstream: from this process's
// cache, else from the store (another replica may have refreshed it), else from the upstream's
// token endpoint.
func (s *Service) accessToken(ctx context.Context, u Upstream) (Secret, error) {
	if u.OAuth2 == nil {
		return Secret{}, fmt.Errorf("upstream %s: auth %s without oauth2 settings", u.Name, u.Auth)
	}
	// Keyed by the upstream's incarnation: a removed and re-created upstream of the same name
	// (perhaps another vendor) never inherits the old one's token.
	key := u.Name + "@" + strconv.FormatInt(u.CreatedAt.UnixNano(), 10)
	s.mu.Lock()
	st := s.tokens[key]
	if st == nil {
		st = &tokenState{}
		s.tokens[key] = st
	}
	s.mu.Unlock()

	st.mu.Lock()
	defer st.mu.Unlock()
	// The cached token is trusted for secretTTL at most: then the store is read again, so a
	// secret replaced through another replica (which stores an expired token) takes effect.
	if st.fresh(s.cfg.Now()) && s.cfg.Now().Sub(st.checked) < secretTTL {
		return st.token, nil
	}
	for attempt := 0; ; attempt++ {
		tok, err := s.loadStored(ctx, u.Name, st)
		if err != nil || st.fresh(s.cfg.Now()) {
			return tok, err
		}
		// Stale: one replica at a time refreshes it (the lease); the others wait for the token
		// it stores.
		held, err := s.takeLease(ctx, u.Name)
		if err != nil {
			return Secret{}, err
		}
		if !held {
			if err := s.waitLease(ctx); err != nil {
				return Secret{}, err
			}
			attempt--
			continue
		}
		// A replica that held the lease until just now may have stored a fresh token.
		if tok, err := s.loadStored(ctx, u.Name, st); err != nil || st.fresh(s.cfg.Now()) {
			s.releaseLease(ctx, u.Name)
			return tok, err
		}
		tok, exp, err := s.refresh(ctx, u)
		s.releaseLease(ctx, u.Name)
		if errors.Is(err, ErrConflict) && attempt < 3 {
			continue // another replica refreshed first: take its token
		}
		if err != nil {
			return Secret{}, err
		}
		st.token, st.expiresAt, st.obtained, st.checked = tok, exp, s.cfg.Now(), s.cfg.Now()
		return tok, nil
	}
}

// loadStored reads the access token from the store into st.
func (s *Service) loadStored(ctx context.Context, name string, st *tokenState) (Secret, error) {
	tok, exp, err := s.storedToken(ctx, name)
	if err != nil {
		return Secret{}, err
	}
	// A token read from the store has an unknown lifetime (another replica may have fetched
	// it): the full margin applies, unless it is the one this process fetched.
	obtained := time.Time{}
	if exp.Equal(st.expiresAt) {
		obtained = st.obtained
	}
	st.token, st.expiresAt, st.obtained, st.checked = tok, exp, obtained, s.cfg.Now()
	return tok, nil
}

// Refresh leases. The lease outlives the token endpoint's timeout: a replica that holds it
// has given up on the endpoint before it lapses, and one that crashed holding it keeps the
// others waiting this long at most.
const (
	leaseTTL  = 45 * time.Second
	leasePoll = 50 * time.Millisecond
)

// takeLease takes the lease on refreshing upstream's access token for this service; true
// without Leases (every replica refreshes for itself).
func (s *Service) takeLease(ctx context.Context, name string) (bool, error) {
	if s.cfg.Leases == nil {
		return true, nil
	}
	held, err := s.cfg.Leases.TakeRefreshLease(ctx, name, s.holder, s.cfg.Now(), leaseTTL)
	if err != nil {
		return false, fmt.Errorf("refresh the access token of %s: %w", name, err)
	}
	return held, nil
}

func (s *Service) releaseLease(ctx context.Context, name string) {
	if s.cfg.Leases == nil {
		return
	}
	if err := s.cfg.Leases.ReleaseRefreshLease(context.WithoutCancel(ctx), name, s.holder); err != nil {
		s.cfg.Log.WarnContext(ctx, "release the refresh lease (it lapses by itself)", slog.String("upstream", name), slog.String("error", err.Error()))
	}
}

// waitLease waits a little while another replica refreshes (or until ctx ends).
func (s *Service) waitLease(ctx context.Context) error {
	t := time.NewTimer(leasePoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// storedToken reads the access token from the store; an empty Secret when there is none.
func (s *Service) storedToken(ctx context.Context, name string) (Secret, time.Time, error) {
	sealed, exp, _, err := s.cfg.Store.GetSecret(ctx, name, SecretAccessToken)
	if errors.Is(err, ErrNotFound) {
		return Secret{}, time.Time{}, nil
	}
	if err != nil {
		return Secret{}, time.Time{}, fmt.Errorf("read access token of %s: %w", name, err)
	}
	plain, err := s.env.Open(name, SecretAccessToken, sealed)
	if err != nil {
		return Secret{}, time.Time{}, fmt.Errorf("open access token of %s: %w", name, err)
	}
	return NewSecret(plain), exp, nil
}

// refresh asks the upstream's token endpoint for a new access token and stores it (with a
// rotated refresh token) only if the secret it was obtained with is unchanged: ErrConflict when
// another replica refreshed in the meantime.
func (s *Service) refresh(ctx context.Context, u Upstream) (Secret, time.Time, error) {
	form := url.Values{}
	checkKind := SecretClientSecret
	var refreshVersion int64
	switch u.Auth {
	case AuthOAuth2Refresh:
		sealed, _, version, err := s.cfg.Store.GetSecret(ctx, u.Name, SecretRefreshToken)
		if errors.Is(err, ErrNotFound) {
			return Secret{}, time.Time{}, noCredential(u.Name, "no refresh token: connect the upstream or set its refresh_token")
		}
		if err != nil {
			return Secret{}, time.Time{}, fmt.Errorf("read refresh token of %s: %w", u.Name, err)
		}
		rt, err := s.env.Open(u.Name, SecretRefreshToken, sealed)
		if err != nil {
			return Secret{}, time.Time{}, fmt.Errorf("open refresh token of %s: %w", u.Name, err)
		}
		defer clear(rt)
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", string(rt))
		checkKind, refreshVersion = SecretRefreshToken, version
	case AuthOAuth2ClientCredentials:
		form.Set("grant_type", "client_credentials")
		if len(u.OAuth2.Scopes) > 0 {
			form.Set("scope", strings.Join(u.OAuth2.Scopes, " "))
		}
	}
	form.Set("client_id", u.OAuth2.ClientID)
	sealed, _, csVersion, err := s.cfg.Store.GetSecret(ctx, u.Name, SecretClientSecret)
	switch {
	case errors.Is(err, ErrNotFound):
		if u.Auth == AuthOAuth2ClientCredentials {
			return Secret{}, time.Time{}, noCredential(u.Name, "no client_secret is set")
		}
		// A public client: the refresh token alone.
	case err != nil:
		return Secret{}, time.Time{}, fmt.Errorf("read client secret of %s: %w", u.Name, err)
	default:
		cs, err := s.env.Open(u.Name, SecretClientSecret, sealed)
		if err != nil {
			return Secret{}, time.Time{}, fmt.Errorf("open client secret of %s: %w", u.Name, err)
		}
		defer clear(cs)
		form.Set("client_secret", string(cs))
	}
	if checkKind == SecretClientSecret {
		refreshVersion = csVersion
	}

	// Fail closed: the upstream's token endpoint is called only once a record of the call is
	// durable; its outcome is recorded after, naming this record as its cause.
	pending, err := s.recordRefreshPending(ctx, u, form.Get("grant_type"))
	if err != nil {
		return Secret{}, time.Time{}, err
	}
	// Not cancelled with the caller: once the upstream has rotated the refresh token, the
	// answer must be stored, or the grant is lost.
	resp, err := s.tokenRequest(context.WithoutCancel(ctx), u, form)
	if err != nil {
		// A replica that refreshed meanwhile may have used up (rotated) the same refresh
		// token, and the upstream refuses the second use: take that replica's token instead.
		if _, _, v, gerr := s.cfg.Store.GetSecret(ctx, u.Name, checkKind); gerr == nil && v != refreshVersion {
			return Secret{}, time.Time{}, ErrConflict
		}
		s.auditRefresh(ctx, u, pending, audit.OutcomeFailure, "token_endpoint", err.Error())
		return Secret{}, time.Time{}, apperr.Wrap(err, apperr.Internal, "upstream_token",
			"the token endpoint of upstream %s did not give an access token", u.Name)
	}
	at := NewSecret([]byte(resp.AccessToken))
	now := s.cfg.Now().UTC()
	// Without expires_in the lifetime is unknown: renew after defaultTokenTTL rather than
	// keep a token the upstream may have dropped.
	exp := now.Add(defaultTokenTTL)
	if resp.ExpiresIn > 0 {
		exp = now.Add(time.Duration(resp.ExpiresIn) * time.Second)
	}
	sealedAT, err := s.env.Seal(u.Name, SecretAccessToken, at.Reveal())
	if err != nil {
		return Secret{}, time.Time{}, fmt.Errorf("seal access token of %s: %w", u.Name, err)
	}
	secrets := map[string]SealedSecret{SecretAccessToken: {Sealed: sealedAT, ExpiresAt: exp}}
	rotated := false
	if resp.RefreshToken != "" && u.Auth == AuthOAuth2Refresh && resp.RefreshToken != form.Get("refresh_token") {
		sealedRT, err := s.env.Seal(u.Name, SecretRefreshToken, []byte(resp.RefreshToken))
		if err != nil {
			return Secret{}, time.Time{}, fmt.Errorf("seal refresh token of %s: %w", u.Name, err)
		}
		secrets[SecretRefreshToken] = SealedSecret{Sealed: sealedRT}
		rotated = true
	}
	ev := audit.New(now, "", ActionTokenRefresh)
	ev.ActorType, ev.Target, ev.Cause = audit.ActorSystem, u.Name, pending
	ev.Detail = fmt.Sprintf("grant=%s refresh_token_rotated=%t", form.Get("grant_type"), rotated)
	err = s.cfg.Store.SwapSecrets(context.WithoutCancel(ctx), u.Name, checkKind, refreshVersion, secrets, ev)
	if errors.Is(err, ErrConflict) {
		if u.Auth == AuthOAuth2ClientCredentials {
			return at, exp, nil // valid, just not the one to keep
		}
		return Secret{}, time.Time{}, err
	}
	if err != nil {
		return Secret{}, time.Time{}, fmt.Errorf("store refreshed token of %s: %w", u.Name, err)
	}
	return at, exp, nil
}

// tokenResponse is an RFC 6749 §5.1 answer. Its String never shows the tokens.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
}

// LogValue keeps the tokens out of logs.
func (tokenResponse) LogValue() slog.Value { return slog.StringValue(Redacted) }

// tokenRequest posts form to the upstream's token endpoint. Its errors quote only the status
// and the OAuth error code, never the request or the response body.
func (s *Service) tokenRequest(ctx context.Context, u Upstream, form url.Values) (*tokenResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.OAuth2.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, errors.New("bad token_url")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // its message repeats the URL, which is config, and the cause
			err = ue.Err
		}
		return nil, fmt.Errorf("POST token endpoint: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read token endpoint answer: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		code := "no OAuth error code"
		if validScope(e.Error) && len(e.Error) <= 40 {
			code = e.Error
		}
		return nil, fmt.Errorf("token endpoint answered HTTP %d (%s)", resp.StatusCode, code)
	}
	var tr tokenResponse
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/x-www-form-urlencoded" || mt == "text/plain" { // GitHub's default
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, errors.New("token endpoint answer is not JSON or a form")
		}
		tr.AccessToken, tr.TokenType, tr.RefreshToken = v.Get("access_token"), v.Get("token_type"), v.Get("refresh_token")
		fmt.Sscan(v.Get("expires_in"), &tr.ExpiresIn)
	} else if err := json.Unmarshal(body, &tr); err != nil {
		return nil, errors.New("token endpoint answer is not JSON")
	}
	clear(body)
	switch {
	case tr.AccessToken == "":
		return nil, errors.New("token endpoint answer has no access_token")
	case tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer"):
		return nil, fmt.Errorf("token endpoint gave a token of type %q, want Bearer", apperr.Clip(tr.TokenType, 20))
	case strings.ContainsAny(tr.AccessToken, "\r\n") || strings.ContainsAny(tr.RefreshToken, "\r\n"):
		return nil, errors.New("token endpoint gave a token with a line break")
	case tr.ExpiresIn < 0:
		tr.ExpiresIn = 0
	}
	return &tr, nil
}

// recordRefreshPending durably records that the token endpoint of u is about to be called, and
// returns the record's id ("" without an audit store).
func (s *Service) recordRefreshPending(ctx context.Context, u Upstream, grantType string) (string, error) {
	if s.cfg.Audit == nil {
		return "", nil
	}
	ev := audit.New(s.cfg.Now(), "", ActionTokenRefresh)
	ev.ActorType, ev.Target, ev.Outcome = audit.ActorSystem, u.Name, audit.OutcomePending
	ev.Detail = fmt.Sprintf("asking the token endpoint of %s for an access token (grant=%s)", u.Name, grantType)
	if err := s.cfg.Audit.AppendEvent(context.WithoutCancel(ctx), ev); err != nil {
		return "", fmt.Errorf("record the token refresh of upstream %s before calling its token endpoint: %w", u.Name, err)
	}
	return ev.ID, nil
}

func (s *Service) auditRefresh(ctx context.Context, u Upstream, cause string, outcome audit.Outcome, reason, detail string) {
	if s.cfg.Audit == nil {
		return
	}
	ev := audit.New(s.cfg.Now(), "", ActionTokenRefresh)
	ev.ActorType, ev.Target, ev.Outcome, ev.Reason, ev.Detail = audit.ActorSystem, u.Name, outcome, reason, detail
	ev.Cause = cause
	if err := s.cfg.Audit.AppendEvent(context.WithoutCancel(ctx), ev); err != nil {
		s.cfg.Log.ErrorContext(ctx, "record upstream token refresh", slog.String("error", err.Error()))
	}
}
