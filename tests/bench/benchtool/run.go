package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// cmdRun runs the command after "--" and prints its wall time in seconds
// and, for each PID of the comma-separated list, the largest VmRSS (KiB)
// seen while it ran, sampled every 100 ms (0 for "-").
func cmdRun(args []string) error {
	if len(args) < 3 || args[1] != "--" {
		return fmt.Errorf("usage: run PID[,PID...] -- CMD...")
	}
	var pids []int
	for _, s := range strings.Split(args[0], ",") {
		if s == "-" || s == "" {
			pids = append(pids, 0)
			continue
		}
		p, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("bad pid %q", s)
		}
		pids = append(pids, p)
	}
	peak := make([]int64, len(pids))
	sample := func() {
		for i, p := range pids {
			if p == 0 {
				continue
			}
			if v := vmField(p, "VmRSS:"); v > peak[i] {
				peak[i] = v
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	sample()
	cpu0 := make([]float64, len(pids))
	for i, p := range pids {
		cpu0[i] = cpuSeconds(p)
	}
	cmd := exec.Command(args[2], args[3:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	sample()
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(args[2:], " "), err)
	}
	fmt.Printf("%.6f", elapsed.Seconds())
	for i, v := range peak {
		cpu := 0.0
		if pids[i] != 0 {
			cpu = cpuSeconds(pids[i]) - cpu0[i]
		}
		fmt.Printf(" %d %.2f", v, cpu)
	}
	fmt.Println()
	return nil
}

// cpuSeconds returns the user+system CPU time of process pid, all its
// threads together (dead ones included), from /proc/PID/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(b[i+1:]))
	// fs[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(fs[11], 64)
	st, _ := strconv.ParseFloat(fs[12], 64)
	return (u + st) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// cmdQuiet waits until the machine's CPUs are at most THRESHOLD busy
// (0..1) over one second, twice in a row, or MAXSECONDS have passed, and
// prints the seconds waited and the last busy fraction. The benchmark's
// own daemons are idle between runs, so what is busy is someone else.
func cmdQuiet(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: quiet MAXSECONDS THRESHOLD")
	}
	maxWait, err1 := strconv.ParseFloat(args[0], 64)
	thresh, err2 := strconv.ParseFloat(args[1], 64)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("usage: quiet MAXSECONDS THRESHOLD")
	}
	start := time.Now()
	calm := 0
	busy := 0.0
	prevIdle, prevTotal := cpuStat()
	for {
		time.Sleep(time.Second)
		idle, total := cpuStat()
		if total > prevTotal {
			busy = 1 - float64(idle-prevIdle)/float64(total-prevTotal)
		}
		prevIdle, prevTotal = idle, total
		if busy <= thresh {
			calm++
		} else {
			calm = 0
		}
		if calm >= 2 || time.Since(start).Seconds() >= maxWait {
			break
		}
	}
	fmt.Printf("%.0f %.2f\n", time.Since(start).Seconds(), busy)
	return nil
}

// cpuStat returns the idle (idle+iowait) and total jiffies of all CPUs.
func cpuStat() (idle, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	for i, f := range fs[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}

// vmField returns a "Vm...:" line of /proc/PID/status in KiB, or 0.
func vmField(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			fs := strings.Fields(l[len(field):])
			if len(fs) > 0 {
				v, _ := strconv.ParseInt(fs[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

func cmdHWM(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: hwm PID")
	}
	p, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	fmt.Println(vmField(p, "VmHWM:"))
	return nil
}
