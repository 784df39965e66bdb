// Command fakeapi stands in for the Ahrefs and Resend APIs in the examples' walkthrough: it
// answers GET /v3/site-explorer/domain-rating and POST /emails, and only to a caller that sends
// Authorization: Bearer <the key in $FAKEAPI_KEY>. It logs each request's method, path and
// whether the key was right — never the key. Standard library only.
//
//	FAKEAPI_KEY=sk-real-… go run ./examples/fakeapi -listen 127.0.0.1:9001
package main

import (
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "the address to listen on")
	flag.Parse()
	key := os.Getenv("FAKEAPI_KEY")
	if key == "" {
		log.Fatal("fakeapi: set FAKEAPI_KEY to the one key it accepts")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v3/site-explorer/domain-rating", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"domain_rating": map[string]any{
			"domain_rating": 91, "ahrefs_rank": 3, "target": r.URL.Query().Get("target")}})
	})
	mux.HandleFunc("POST /emails", func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			To      []string `json:"to"`
			Subject string   `json:"subject"`
		}
		if json.NewDecoder(r.Body).Decode(&e) != nil || len(e.To) == 0 || e.Subject == "" {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "to and subject are required"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"id": fmt.Sprintf("em_%d", time.Now().UnixNano())})
	})
	auth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+key)) == 1
		log.Printf("%s %s key ok: %v", r.Method, r.URL.Path, ok)
		if !ok {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "invalid API key"})
			return
		}
		mux.ServeHTTP(w, r)
	})
	log.Printf("fakeapi listening on http://%s", *listen)
	log.Fatal((&http.Server{Addr: *listen, Handler: auth, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
