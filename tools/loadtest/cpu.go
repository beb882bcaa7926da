package main

// CPU time per request: each process's user and system time, read from
// /proc before and after each round, and CPU profiles of the proxies taken
// from their pprof endpoints.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicksPerSecond is USER_HZ, the unit of /proc/PID/stat's times:
// sysconf(_SC_CLK_TCK), 100 on every Linux architecture Go supports.
const clockTicksPerSecond = 100

// cpuTime is the CPU time, user and system, that process pid and all its
// threads have used so far (proc(5): utime and stime, fields 14 and 15 of
// /proc/PID/stat).
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Field 2, the command name, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(raw[i+1:])) // fields[0] is field 3
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, fields[11], fields[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicksPerSecond, nil
}

// cpuPerRequest is the CPU time per request, in µs, over the rounds rs:
// the measured process's, or the origin's. Summing the rounds before
// dividing keeps the 10 ms resolution of the clock ticks out of the figure.
func cpuPerRequest(rs []result, origin bool) float64 {
	var cpu time.Duration
	var reqs int64
	for _, r := range rs {
		reqs += r.reqs
		if origin {
			cpu += r.originCPU
		} else {
			cpu += r.cpu
		}
	}
	if reqs == 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(reqs)
}

// writeProfiles takes a CPU profile of each proxy under each cell's load
// and writes it to dir as NAME-ORIGIN-KiB-CONNS.pprof (go tool pprof
// reads it).
func writeProfiles(dir string, stacks []stack, configs []config, d time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, st := range stacks {
		for _, c := range configs {
			if !c.in(st.origin) {
				continue
			}
			for _, tg := range st.targets {
				if tg.profile == "" {
					continue
				}
				file := filepath.Join(dir, fmt.Sprintf("%s-%s-%dKiB-%d.pprof", strings.ReplaceAll(tg.name, "@", "-"), st.origin, c.bytes>>10, c.conns))
				var wg sync.WaitGroup
				var perr error
				wg.Go(func() { perr = fetchProfile(tg.profile, d, file) })
				time.Sleep(100 * time.Millisecond) // the profile is running
				res := load(tg.base, st.roots, c.conns, c.bytes, d)
				wg.Wait()
				if perr != nil {
					return perr
				}
				fmt.Printf("CPU profile of %s, %s origin, %d KiB, %d conns (%.0f req/s): %s\n", tg.name, st.origin, c.bytes>>10, c.conns, res.rps(), file)
			}
		}
	}
	return nil
}

// fetchProfile asks url (a /debug/pprof/profile handler) for a profile of
// d and writes it to file.
func fetchProfile(url string, d time.Duration, file string) error {
	resp, err := http.Get(url + "?seconds=" + strconv.Itoa(int(d.Seconds())))
	if err != nil {
		return fmt.Errorf("CPU profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("CPU profile from %s: %s", url, resp.Status)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("CPU profile: %w", err)
	}
	return os.WriteFile(file, raw, 0o644)
}
