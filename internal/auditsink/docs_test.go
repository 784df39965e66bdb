package auditsink_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/auditsink"
)

// The shell check of a webhook signature in docs/audit-sinks.md runs as pasted: it accepts a
// signature mandate made, and refuses an edited body, another secret and an old request.
func TestDocWebhookCheck(t *testing.T) {
	for _, tool := range []string{"bash", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	raw, err := os.ReadFile("../../docs/audit-sinks.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- verify-webhook -->\n```sh\n(.*?)```").FindSubmatch(raw)
	if m == nil {
		t.Fatal("docs/audit-sinks.md has no verify-webhook snippet")
	}
	secret := "9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60"
	body := `{"records":[{"type":"event","seq":1,"detail":"a \"quoted\" détail"}]}`
	for _, tc := range []struct {
		name       string
		signedBody string
		secret     string
		at         time.Time
		want       string
	}{
		{"good", body, secret, time.Now(), "signature ok"},
		{"edited body", strings.Replace(body, "seq\":1", "seq\":2", 1), secret, time.Now(), "signature BAD"},
		{"other secret", body, "0000000000000000", time.Now(), "signature BAD"},
		{"replayed", body, secret, time.Now().Add(-10 * time.Minute), "signature BAD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "body.json"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "webhook.secret"), []byte(secret+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", "-c", string(m[1]))
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "sig="+auditsink.Sign([]byte(tc.secret), tc.at, []byte(tc.signedBody)))
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != tc.want {
				t.Errorf("the snippet said %q (%v), want %q", out, err, tc.want)
			}
		})
	}
}
