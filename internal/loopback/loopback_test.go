package loopback

import "testing"

func TestHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST:8080": true, "127.0.0.1": true, "127.9.9.9:443": true,
		"::1": true, "[::1]": true, "[::1]:8420": true,
		"example.com": false, "10.0.0.1": false, "localhost.example.com": false, "0.0.0.0": false,
		"::": false, "": false, "127.0.0.1.nip.io": false,
	} {
		if got := Host(host); got != want {
			t.Errorf("Host(%q) = %v, want %v", host, got, want)
		}
	}
}
