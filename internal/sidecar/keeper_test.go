package sidecar

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/mandate-dev/mandate/client"
)

// TestBackoff: the wait after the n-th failure in a row is within ±20% of min(2^(n-1) s, 30 s),
// for any n, and never grows past the cap.
func TestBackoff(t *testing.T) {
	for n := 1; n <= 100; n++ {
		base := retryMax
		if n < 16 {
			base = min(retryFirst<<(n-1), retryMax)
		}
		for range 20 {
			d := backoff(n)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("backoff(%d) = %v, want within ±20%% of %v", n, d, base)
			}
		}
	}
}

// TestPermanent: only the server's refusal ends renewal; what may pass is tried again while the
// token is valid.
func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&client.Error{Status: 400, Code: "invalid_grant"}, true},
		{fmt.Errorf("client: %w", &client.Error{Status: 401, Code: "invalid_token"}), true},
		{&client.Error{Status: 403, Code: "access_denied"}, true},
		{&client.Error{Status: 429, Code: "slow_down"}, false},
		{&client.Error{Status: 500, Code: "server_error"}, false},
		{&client.Error{Status: 503, Code: "temporarily_unavailable"}, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, false},
		{errors.New("client: the token response has no access_token"), false},
	} {
		if got := permanent(tc.err); got != tc.want {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
