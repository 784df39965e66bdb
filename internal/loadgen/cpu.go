package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// cpuMetric is the Prometheus process collector's CPU counter (user + system seconds).
const cpuMetric = "process_cpu_seconds_total"

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// ParseCPUMetric finds process_cpu_seconds_total in a Prometheus text exposition and returns
// its value. A sample with labels is not it (a process's counter has none).
func ParseCPUMetric(r io.Reader) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte(cpuMetric)) {
			continue
		}
		rest := line[len(cpuMetric):]
		if len(rest) == 0 || (rest[0] != ' ' && rest[0] != '\t') {
			continue // another metric whose name starts the same, or one with labels
		}
		fields := strings.Fields(string(rest))
		if len(fields) == 0 || len(fields) > 2 { // value [timestamp]
			return 0, fmt.Errorf("%s: malformed sample %q", cpuMetric, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil || v < 0 || v != v || v > 1e15 {
			return 0, fmt.Errorf("%s: value %q is not a CPU time in seconds", cpuMetric, fields[0])
		}
		return v, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading the metrics: %w", err)
	}
	return 0, fmt.Errorf("no %s in the metrics", cpuMetric)
}

// ParseProcStat returns the user + system CPU seconds of a /proc/PID/stat line.
func ParseProcStat(stat []byte) (float64, error) {
	// The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
	// the fields after it start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command name, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 63)
	st, err2 := strconv.ParseUint(f[12], 10, 63)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc stat: utime %q or stime %q is not a tick count", f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// serverCPU is the sum of the servers' CPU seconds, from /proc when PIDs are given, else from
// their metrics. An error says why it is unknown.
func (b *Bench) serverCPU(ctx context.Context) (float64, error) {
	total := 0.0
	if len(b.cfg.PIDs) > 0 {
		for _, pid := range b.cfg.PIDs {
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				return 0, fmt.Errorf("--server-pid %d: %w", pid, err)
			}
			v, err := ParseProcStat(raw)
			if err != nil {
				return 0, fmt.Errorf("--server-pid %d: %w", pid, err)
			}
			total += v
		}
		return total, nil
	}
	for i, s := range b.cfg.Servers {
		u := s + "/metrics"
		if len(b.cfg.Metrics) > 0 {
			u = b.cfg.Metrics[i]
		}
		v, err := b.scrape(ctx, u)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

func (b *Bench) scrape(ctx context.Context, u string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, fmt.Errorf("metrics URL %q: %w", u, err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := b.setup.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics %s: %d (a server started with --metrics-listen serves them there: pass --metrics URL, one per server)", u, resp.StatusCode)
	}
	v, err := ParseCPUMetric(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, fmt.Errorf("metrics %s: %w", u, err)
	}
	return v, nil
}
