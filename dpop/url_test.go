package dpop

import "testing"

func TestNormalizeURL(t *testing.T) {
	tests := map[string]struct {
		in, want string
		wantErr  bool
	}{
		"already normal":        {in: "https://as.example.com/token", want: "https://as.example.com/token"},
		"query and fragment":    {in: "https://as.example.com/token?a=b#c", want: "https://as.example.com/token"},
		"empty query":           {in: "https://as.example.com/token?", want: "https://as.example.com/token"},
		"upper-case scheme":     {in: "HTTPS://as.example.com/token", want: "https://as.example.com/token"},
		"upper-case host":       {in: "https://AS.Example.COM/token", want: "https://as.example.com/token"},
		"path case kept":        {in: "https://as.example.com/Token", want: "https://as.example.com/Token"},
		"https default port":    {in: "https://as.example.com:443/token", want: "https://as.example.com/token"},
		"http default port":     {in: "http://localhost:80/token", want: "http://localhost/token"},
		"empty port":            {in: "https://as.example.com:/token", want: "https://as.example.com/token"},
		"other port kept":       {in: "https://as.example.com:8443/token", want: "https://as.example.com:8443/token"},
		"443 on http kept":      {in: "http://as.example.com:443/token", want: "http://as.example.com:443/token"},
		"empty path":            {in: "https://as.example.com", want: "https://as.example.com/"},
		"empty path with query": {in: "https://as.example.com?x=1", want: "https://as.example.com/"},
		"trailing slash kept":   {in: "https://as.example.com/token/", want: "https://as.example.com/token/"},
		"dot segments":          {in: "https://as.example.com/a/./b/../token", want: "https://as.example.com/a/token"},
		"dot-dot above root":    {in: "https://as.example.com/../token", want: "https://as.example.com/token"},
		"trailing dot-dot":      {in: "https://as.example.com/a/b/..", want: "https://as.example.com/a/"},
		"unreserved decoded":    {in: "https://as.example.com/%74%6F%6b%65%6E", want: "https://as.example.com/token"},
		"encoded dots removed":  {in: "https://as.example.com/a/%2E%2E/token", want: "https://as.example.com/token"},
		"reserved kept":         {in: "https://as.example.com/a%2fb", want: "https://as.example.com/a%2Fb"},
		"space encoded":         {in: "https://as.example.com/a%20b", want: "https://as.example.com/a%20b"},
		"double slash kept":     {in: "https://as.example.com//token", want: "https://as.example.com//token"},
		"ipv6 default port":     {in: "https://[::1]:443/x", want: "https://[::1]/x"},
		"ipv6 other port":       {in: "https://[::1]:8443/x", want: "https://[::1]:8443/x"},
		"relative":              {in: "/token", wantErr: true},
		"no host":               {in: "https:///token", wantErr: true},
		"opaque":                {in: "https:as.example.com", wantErr: true},
		"ftp":                   {in: "ftp://as.example.com/", wantErr: true},
		"userinfo":              {in: "https://user:pw@as.example.com/", wantErr: true},
		"bad escape":            {in: "https://as.example.com/%zz", wantErr: true},
		"empty":                 {in: "", wantErr: true},
		"control character":     {in: "https://as.example.com/\x7f", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NormalizeURL(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Errorf("NormalizeURL(%q) = %q, want error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizeURL(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("NormalizeURL(%q) = %q, want %q", tc.in, got, tc.want)
			}
			// Normalising is idempotent.
			if again, err := NormalizeURL(got); err != nil || again != got {
				t.Errorf("NormalizeURL(%q) = %q, %v; not idempotent", got, again, err)
			}
		})
	}
}
