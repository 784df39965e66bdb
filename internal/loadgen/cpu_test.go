package loadgen

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"
)

// checkParsed checks a parse that must give want, or fail with an error containing wantErr.
func checkParsed(t *testing.T, got float64, err error, want float64, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("got %v, %v; want an error with %q", got, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
}

func TestParseCPUMetric(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want float64
		err  string
	}{
		"client_golang": {in: "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n" +
			"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.34\nprocess_max_fds 1024\n", want: 12.34},
		"exponent":        {in: "process_cpu_seconds_total 1.5e+02\n", want: 150},
		"timestamp":       {in: "process_cpu_seconds_total 3 1700000000000\n", want: 3},
		"longer name":     {in: "process_cpu_seconds_total_other 9\nprocess_cpu_seconds_total 2\n", want: 2},
		"labels skipped":  {in: "process_cpu_seconds_total{x=\"y\"} 9\n", err: "no process_cpu_seconds_total"},
		"absent":          {in: "go_goroutines 8\n", err: "no process_cpu_seconds_total"},
		"empty":           {in: "", err: "no process_cpu_seconds_total"},
		"not a number":    {in: "process_cpu_seconds_total abc\n", err: "not a CPU time"},
		"negative":        {in: "process_cpu_seconds_total -1\n", err: "not a CPU time"},
		"NaN":             {in: "process_cpu_seconds_total NaN\n", err: "not a CPU time"},
		"too many fields": {in: "process_cpu_seconds_total 1 2 3\n", err: "malformed"},
		"no value":        {in: "process_cpu_seconds_total \n", err: "malformed"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseCPUMetric(strings.NewReader(tc.in))
			checkParsed(t, got, err, tc.want, tc.err)
		})
	}
}

func TestParseProcStat(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want float64
		err  string
	}{
		"plain":        {in: "4242 (mandate) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 1000 200 18446744073709551615\n", want: 3.25},
		"odd name":     {in: "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 1 1\n", want: 0.03},
		"no name":      {in: "7 mandate R 1", err: "no command name"},
		"short":        {in: "7 (m) R 1 2 3", err: "fields"},
		"not a number": {in: "7 (m) R 1 7 7 0 -1 0 0 0 0 0 x 2 0", err: "tick count"},
		"negative":     {in: "7 (m) R 1 7 7 0 -1 0 0 0 0 0 -1 2 0", err: "tick count"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseProcStat([]byte(tc.in))
			checkParsed(t, got, err, tc.want, tc.err)
		})
	}
}

// The class: whatever the command name holds (spaces, parentheses), utime + stime are read
// from the fields after it.
func TestParseProcStatAnyName(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("ab )(x 1")
	for range 500 {
		name := make([]rune, r.IntN(16))
		for i := range name {
			name[i] = alphabet[r.IntN(len(alphabet))]
		}
		ut, st := r.Uint64N(1<<40), r.Uint64N(1<<40)
		line := fmt.Sprintf("%d (%s) S 1 2 3 0 -1 0 0 0 0 0 %d %d 0 0 20 0 1 0 5 6 7\n", r.IntN(1<<22), string(name), ut, st)
		got, err := ParseProcStat([]byte(line))
		if want := float64(ut+st) / clockTicks; err != nil || got != want {
			t.Fatalf("%q: got %v, %v; want %v", line, got, err, want)
		}
	}
}

// This process's own stat parses, and its CPU does not go backwards.
func TestParseProcStatSelf(t *testing.T) {
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc here")
	}
	a, err := ParseProcStat(raw)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(30 * time.Millisecond); time.Now().Before(end); {
	}
	raw, _ = os.ReadFile("/proc/self/stat")
	b, err := ParseProcStat(raw)
	if err != nil || b < a {
		t.Fatalf("CPU went from %v to %v (%v)", a, b, err)
	}
}

func FuzzParseCPUMetric(f *testing.F) {
	f.Add("process_cpu_seconds_total 12.34\n")
	f.Add("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1e3 17\n")
	f.Add("process_cpu_seconds_total{a=\"b\"} 1\nprocess_cpu_seconds_total_x 2\n")
	f.Fuzz(func(t *testing.T, in string) {
		v, err := ParseCPUMetric(strings.NewReader(in))
		if err == nil && (v < 0 || v != v) {
			t.Fatalf("accepted %v from %q", v, in)
		}
	})
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("4242 (mandate) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 1000 200\n"))
	f.Add([]byte("7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0"))
	f.Add([]byte("7 ()"))
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := ParseProcStat(in)
		if err == nil && (v < 0 || v != v) {
			t.Fatalf("accepted %v from %q", v, in)
		}
	})
}
