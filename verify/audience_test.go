package verify

import "testing"

func TestSameAudience(t *testing.T) {
	tests := []struct {
		aud, want string
		same      bool
	}{
		{"https://api.example", "https://api.example", true},
		{"https://api.example/", "https://api.example", true},
		{"https://api.example", "https://api.example/", true},
		{"https://api.example/v1", "https://api.example/v1/", false}, // only the empty path is "/"
		{"https://api.example.evil", "https://api.example", false},
		{"https://api.example//", "https://api.example/", false},
		{"api", "api/", false},
		{"https://other.example/", "https://api.example", false},
	}
	for _, tt := range tests {
		if got := sameAudience(tt.aud, tt.want); got != tt.same {
			t.Errorf("sameAudience(%q, %q) = %v, want %v", tt.aud, tt.want, got, tt.same)
		}
	}
}
