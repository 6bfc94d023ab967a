package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// memory is a process's resident memory in MiB.
type memory struct{ rss, peak float64 }

// readMemory reads VmRSS and VmHWM (the peak) of pid.
func readMemory(pid int) (memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	var found int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		var dst *float64
		switch key {
		case "VmRSS":
			dst = &m.rss
		case "VmHWM":
			dst = &m.peak
		default:
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 64)
		if err != nil {
			return memory{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, key, err)
		}
		*dst = round(kb / 1024)
		found++
	}
	if found != 2 {
		return memory{}, fmt.Errorf("/proc/%d/status: no VmRSS and VmHWM (a kernel thread?)", pid)
	}
	return m, nil
}

// resetPeak sets pid's VmHWM back to its current RSS (Linux 4.0+, for
// processes we may write to), so that the peak is the measured phase's.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 for every architecture's user-space ABI.
const userHZ = 100

// readCPU reads the CPU time pid has used, user and system, in seconds.
func readCPU(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count the fields after its closing one. utime and stime are fields
	// 14 and 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	var ticks float64
	for _, s := range f[11:13] {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return ticks / userHZ, nil
}

// memWatch measures the server's memory, and the CPU time it spends, over
// a measured phase.
type memWatch struct {
	pid       int
	before    float64
	cpu       float64
	peakReset bool
}

// watchMemory starts a memWatch; nil without a pid.
func (r *runner) watchMemory() (*memWatch, error) {
	if r.o.PID == 0 {
		return nil, nil
	}
	w := &memWatch{pid: r.o.PID, peakReset: resetPeak(r.o.PID) == nil}
	m, err := readMemory(w.pid)
	if err != nil {
		return nil, fmt.Errorf("server memory: %w", err)
	}
	w.before = m.rss
	if w.cpu, err = readCPU(w.pid); err != nil {
		return nil, fmt.Errorf("server CPU time: %w", err)
	}
	return w, nil
}

// done reads the memory after the phase into res.
func (w *memWatch) done(res *Result) error {
	if w == nil {
		return nil
	}
	m, err := readMemory(w.pid)
	if err != nil {
		return fmt.Errorf("server memory: %w", err)
	}
	res.RSSMiB = &Memory{Before: w.before, After: m.rss, Peak: m.peak}
	cpu, err := readCPU(w.pid)
	if err != nil {
		return fmt.Errorf("server CPU time: %w", err)
	}
	res.ServerCPUS = round(cpu - w.cpu)
	if !w.peakReset {
		res.note("peak RSS is since the server started (could not reset VmHWM through /proc/%d/clear_refs)", w.pid)
	}
	return nil
}

// ensureFiles raises this process's open-file limit to its hard limit and
// checks that need descriptors fit: each concurrent request is a socket.
func ensureFiles(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open-file limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // checked below
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if lim.Cur < uint64(need) {
		return fmt.Errorf("this run needs about %d open files but the limit is %d (hard limit %d): raise it (ulimit -n) or ask for fewer connections", need, lim.Cur, lim.Max)
	}
	return nil
}

// serverFileLimit is the soft open-file limit of pid, from /proc/<pid>/limits.
func serverFileLimit(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if f[0] == "unlimited" {
					return 1 << 30, nil
				}
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/limits: no Max open files", pid)
}

// With a pid, the bench waits for the server to go quiet (under quietCPU
// of one core over quietWindow, for at most settleMax) before it measures:
// work the setup left behind (counting notifications of the messages it
// sent, taking in requests) would otherwise be measured with the
// scenario, and more of it on a slower machine.
const (
	settleMax   = time.Minute
	quietWindow = 500 * time.Millisecond
	quietCPU    = 0.1
)

// settle waits for the server to go quiet, after what (for the notes),
// and returns the CPU time the server spent meanwhile, in seconds.
// Without a pid it returns at once.
func (r *runner) settle(ctx context.Context, res *Result, after string) (float64, error) {
	if r.o.PID == 0 {
		return 0, nil
	}
	start := time.Now()
	first, err := readCPU(r.o.PID)
	if err != nil {
		return 0, fmt.Errorf("server CPU time: %w", err)
	}
	before := first
	for time.Since(start) < settleMax {
		if !sleepUntil(ctx, time.Now().Add(quietWindow)) {
			return 0, ctx.Err()
		}
		now, err := readCPU(r.o.PID)
		if err != nil {
			return 0, fmt.Errorf("server CPU time: %w", err)
		}
		if now-before < quietCPU*quietWindow.Seconds() {
			if d := time.Since(start); d > 2*quietWindow {
				res.note("the server went quiet %.1f s after %s", d.Seconds(), after)
			}
			return now - first, nil
		}
		before = now
	}
	res.note("the server was still busy %s after %s", settleMax, after)
	return before - first, nil
}
