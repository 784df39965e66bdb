// Command resend sends one email through the Resend API, in the style of the usual agent tools:
// it reads its API key from RESEND_API_KEY and the API's base URL from RESEND_BASE_URL, and
// knows nothing of mandate. Standard library only.
//
//	RESEND_API_KEY=re_… resend --from bot@example.com --to ops@example.com --subject Hi --text Hello
//	mandate exec --grant gr_… --purpose "send the report" \
//	    --upstream resend=RESEND_BASE_URL --placeholder RESEND_API_KEY -- resend --to … --subject … --text …
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type email struct {
	From    string   `json:"from"`
	To      []string `json:"to"`
	Subject string   `json:"subject"`
	Text    string   `json:"text"`
}

func main() {
	var e email
	var to string
	flag.StringVar(&e.From, "from", "onboarding@resend.dev", "the sender")
	flag.StringVar(&to, "to", "", "the recipients, comma-separated (required)")
	flag.StringVar(&e.Subject, "subject", "", "the subject (required)")
	flag.StringVar(&e.Text, "text", "", "the plain-text body")
	flag.Parse()
	for _, r := range strings.Split(to, ",") {
		if r = strings.TrimSpace(r); r != "" {
			e.To = append(e.To, r)
		}
	}
	if len(e.To) == 0 || e.Subject == "" {
		fmt.Fprintln(os.Stderr, "usage: resend --to ADDR[,ADDR…] --subject S [--text T] [--from ADDR]")
		os.Exit(2)
	}
	key := os.Getenv("RESEND_API_KEY")
	if key == "" {
		fmt.Fprintln(os.Stderr, "resend: set RESEND_API_KEY")
		os.Exit(2)
	}
	base := strings.TrimRight(os.Getenv("RESEND_BASE_URL"), "/")
	if base == "" {
		base = "https://api.resend.com"
	}
	if err := send(base, key, e); err != nil {
		fmt.Fprintln(os.Stderr, "resend:", err)
		os.Exit(1)
	}
}

func send(base, key string, e email) error {
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, base+"/emails", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(out))
	}
	fmt.Println(string(bytes.TrimSpace(out)))
	return nil
}
