package server_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/syncbuf"
)

// startOn runs a server on the data directory dir, logging to log, until stop.
func startOn(t *testing.T, dir string, log *syncbuf.Buffer) (*server.Server, string, func()) {
	t.Helper()
	return (&dataDirServer{t: t, dir: dir, clock: &clock{}, log: log}).start()
}

func chainOK(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "mandate_audit_chain_ok ") {
			return strings.TrimPrefix(l, "mandate_audit_chain_ok ")
		}
	}
	t.Fatal("no mandate_audit_chain_ok in /metrics")
	return ""
}

// A graceful shutdown signs a last checkpoint; the next start checks the tail against it and
// says so; a tail changed while the server was down is an ERROR that names the seq and sets
// mandate_audit_chain_ok to 0, and the server still starts. The checkpoints verify with the
// published keys and a plain JOSE library.
func TestStartupChecksTail(t *testing.T) {
	dir := t.TempDir()
	var log1 syncbuf.Buffer
	srv, _, stop := startOn(t, dir, &log1)
	for i := range 3 {
		ev := audit.New(time.Now(), "req", audit.ActionTokenIssue)
		ev.ActorType, ev.Detail = audit.ActorSystem, fmt.Sprint("event ", i)
		if err := srv.Store().AppendEvent(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	head, _, err := srv.Store().ChainHead(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stop()

	var log2 syncbuf.Buffer
	srv, url, stop := startOn(t, dir, &log2)
	last, ok, err := srv.Store().LastCheckpoint(t.Context())
	if err != nil || !ok || last.Seq != head {
		t.Fatalf("after a graceful shutdown the last checkpoint = %+v, %v, %v; want seq %d", last, ok, err, head)
	}
	if !strings.Contains(log2.String(), "matches its last signed checkpoint") || strings.Contains(log2.String(), "level=ERROR") {
		t.Errorf("start on an intact chain logged:\n%s", log2.String())
	}
	if got := chainOK(t, url); got != "1" {
		t.Errorf("mandate_audit_chain_ok = %s, want 1", got)
	}
	// The published keys, unauthenticated, check the checkpoint with go-jose alone.
	resp, err := http.Get(url + "/v1/audit/checkpoint-keys")
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&jwks)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(jwks.Keys) != 1 {
		t.Fatalf("GET /v1/audit/checkpoint-keys: %d, %v, %+v", resp.StatusCode, err, jwks)
	}
	jws, err := jose.ParseSignedCompact(last.JWS, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify(jwks.Key(jws.Signatures[0].Header.KeyID)[0].Key)
	if err != nil || !strings.Contains(string(payload), fmt.Sprintf(`"seq":%d`, head)) || jws.Signatures[0].Protected.ExtraHeaders["typ"] != audit.CheckpointType {
		t.Errorf("go-jose: %s, %v, header %+v", payload, err, jws.Signatures[0].Protected)
	}
	stop()

	db, err := sql.Open("sqlite", filepath.Join(dir, server.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `UPDATE audit_events SET detail = 'nothing happened' WHERE seq = $1`, head); err != nil {
		t.Fatal(err)
	}
	db.Close()

	var log3 syncbuf.Buffer
	_, url, stop = startOn(t, dir, &log3)
	defer stop()
	out := log3.String()
	for _, want := range []string{"level=ERROR", "THE AUDIT CHAIN DOES NOT MATCH ITS LAST SIGNED CHECKPOINT", fmt.Sprintf("broken at seq %d", head), "mandate keeps serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("start on a changed tail: the log does not say %q:\n%s", want, out)
		}
	}
	if got := chainOK(t, url); got != "0" {
		t.Errorf("mandate_audit_chain_ok = %s, want 0", got)
	}
	if resp, err := http.Get(url + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("the server does not serve after a failed tail check: %v", err)
	}
}
