// Command benchtool is the helper of tests/bench/compare.sh: it writes the
// benchmark's source data, drops and checks a file's page cache, runs one
// measured command while sampling the daemons' RSS, and prints the final
// table. It is not part of chainfs.
//
//	benchtool random FILE SIZE [SEED]           incompressible data
//	benchtool stripes FILE SIZE CLUSTER EVERY SEED
//	                                            sparse file, random data in every EVERY-th cluster
//	benchtool text FILE SIZE SEED               compressible, non-uniform data
//	benchtool drop FILE...                      POSIX_FADV_DONTNEED, then print resident pages
//	benchtool resident FILE...                  print resident pages (mincore)
//	benchtool run PIDS -- CMD...                run CMD, print "SECONDS [RSS_KIB CPU_SECONDS]..."
//	                                            (max VmRSS and CPU time of each PID while it ran)
//	benchtool quiet MAXSECONDS THRESHOLD        wait for the CPUs to be idle
//	benchtool fioiops JSON                      "IOPS TOTAL_IOS" of a fio --output-format=json run
//	benchtool hwm PID                           VmHWM of PID in KiB
//	benchtool report RESULTS.tsv                the comparison table
//
// SIZE accepts the suffixes K, M, G, T (powers of 1024).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		die("usage: benchtool random|stripes|text|drop|resident|run|quiet|fioiops|hwm|report ...")
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "random":
		err = cmdRandom(args)
	case "stripes":
		err = cmdStripes(args)
	case "text":
		err = cmdText(args)
	case "drop":
		err = cmdDrop(args, true)
	case "resident":
		err = cmdDrop(args, false)
	case "run":
		err = cmdRun(args)
	case "quiet":
		err = cmdQuiet(args)
	case "fioiops":
		err = cmdFioIOPS(args)
	case "hwm":
		err = cmdHWM(args)
	case "report":
		err = cmdReport(args)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		die(err.Error())
	}
}

func die(msg string) {
	fmt.Fprintln(os.Stderr, "benchtool:", msg)
	os.Exit(1)
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		case 'T', 't':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

func seedArg(args []string, i int) uint64 {
	if len(args) > i {
		v, err := strconv.ParseUint(args[i], 10, 64)
		if err == nil {
			return v
		}
	}
	return 1
}

// cmdRandom writes SIZE bytes of ChaCha8 output: incompressible, and
// without zero blocks that qemu-img convert would turn into holes.
func cmdRandom(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: random FILE SIZE [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	rng := newChaCha(seedArg(args, 2))
	buf := make([]byte, 1<<20)
	w := bufio.NewWriterSize(f, 4<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newChaCha(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// cmdStripes writes a sparse file of SIZE whose clusters i with
// i%EVERY == 0 hold random data, the rest holes: converted to qcow2, only
// those clusters are allocated.
func cmdStripes(args []string) error {
	if len(args) < 4 {
		return fmt.Errorf("usage: stripes FILE SIZE CLUSTER EVERY [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	cluster, err := parseSize(args[2])
	if err != nil || cluster == 0 {
		return fmt.Errorf("bad cluster size %q", args[2])
	}
	every, err := strconv.ParseInt(args[3], 10, 64)
	if err != nil || every < 1 {
		return fmt.Errorf("bad stride %q", args[3])
	}
	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	rng := newChaCha(seedArg(args, 4))
	buf := make([]byte, cluster)
	for i := int64(0); i*cluster < size; i += every {
		rng.Read(buf)
		n := cluster
		if off := i * cluster; off+n > size {
			n = size - off
		}
		if _, err := f.WriteAt(buf[:n], i*cluster); err != nil {
			return err
		}
	}
	return f.Close()
}

// cmdText writes compressible data that is not uniform: Zipf-distributed
// words from a random vocabulary in lines of varying length (like logs or
// source text), with zero runs and a few incompressible stretches mixed in,
// decided per 64 KiB chunk.
func cmdText(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: text FILE SIZE [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	seed := seedArg(args, 2)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	raw := newChaCha(seed)
	vocab := make([]string, 8192)
	for i := range vocab {
		n := 2 + rng.IntN(11)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		vocab[i] = string(b)
	}
	zipf := rand.NewZipf(rng, 1.1, 4, uint64(len(vocab)-1))
	punct := []string{" ", " ", " ", " ", " ", ", ", ". ", "; ", " = ", "(", ") ", ": "}

	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 4<<20)
	const chunk = 64 << 10
	var line strings.Builder
	buf := make([]byte, 0, chunk+256)
	for written := int64(0); written < size; {
		n := int64(chunk)
		if size-written < n {
			n = size - written
		}
		buf = buf[:0]
		switch r := rng.IntN(100); {
		case r < 8: // a zero run
			buf = append(buf, make([]byte, n)...)
		case r < 12: // incompressible (already compressed media, say)
			buf = buf[:n]
			raw.Read(buf)
		default:
			for int64(len(buf)) < n {
				line.Reset()
				fmt.Fprintf(&line, "%06d ", rng.IntN(1000000))
				words := 3 + rng.IntN(14)
				for k := 0; k < words; k++ {
					line.WriteString(vocab[zipf.Uint64()])
					line.WriteString(punct[rng.IntN(len(punct))])
				}
				line.WriteByte('\n')
				buf = append(buf, line.String()...)
			}
			buf = buf[:n]
		}
		if _, err := w.Write(buf); err != nil {
			f.Close()
			return err
		}
		written += n
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cmdDrop asks the kernel to drop each file's clean pages (if drop), then
// prints "FILE RESIDENT_PAGES TOTAL_PAGES" as mincore reports them; a
// file that cannot be mapped (FUSE direct_io) prints -1.
func cmdDrop(args []string, drop bool) error {
	for _, p := range args {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		if drop {
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				f.Close()
				return fmt.Errorf("fadvise %s: %w", p, err)
			}
		}
		res, total := resident(f)
		f.Close()
		fmt.Printf("%s %d %d\n", p, res, total)
	}
	return nil
}

// resident counts the file's pages in the page cache with mincore. Files
// over 64 GiB are looked at only in the extents SEEK_DATA reports, so a
// sparse multi-TiB view is quick (cp and friends never read its holes);
// smaller ones whole, holes included, since dd caches those too.
func resident(f *os.File) (res, total int64) {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, 0
	}
	size := st.Size()
	page := int64(os.Getpagesize())
	total = (size + page - 1) / page
	fd := int(f.Fd())
	if size <= 64<<30 {
		n, ok := residentRange(fd, 0, size)
		if !ok {
			return -1, total
		}
		return n, total
	}
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil { // no SEEK_DATA: all data
			start = off
		}
		end := size
		if err == nil {
			if e, err := unix.Seek(fd, start, unix.SEEK_HOLE); err == nil {
				end = e
			}
		}
		n, ok := residentRange(fd, start/page*page, end)
		if !ok {
			return -1, total
		}
		res += n
		off = end
	}
	return res, total
}

// residentRange counts resident pages in [from, to), from page-aligned,
// mapping 1 GiB at a time.
func residentRange(fd int, from, to int64) (int64, bool) {
	page := int64(os.Getpagesize())
	const piece = 1 << 30
	vec := make([]byte, piece/page)
	var res int64
	for off := from; off < to; off += piece {
		n := int64(piece)
		if to-off < n {
			n = to - off
		}
		m, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return 0, false
		}
		np := (n + page - 1) / page
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			unix.Munmap(m)
			return 0, false
		}
		for _, b := range vec[:np] {
			res += int64(b & 1)
		}
		unix.Munmap(m)
	}
	return res, true
}

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

func cmdFioIOPS(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: fioiops JSON")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	// fio may print warnings before the JSON document.
	if i := strings.IndexByte(string(b), '{'); i > 0 {
		b = b[i:]
	}
	var out struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS     float64 `json:"iops"`
				TotalIOs int64   `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if len(out.Jobs) == 0 {
		return fmt.Errorf("%s: no jobs", args[0])
	}
	sum, ios := 0.0, int64(0)
	for _, j := range out.Jobs {
		if j.Error != 0 {
			return fmt.Errorf("%s: fio job error %d", args[0], j.Error)
		}
		sum += j.Read.IOPS
		ios += j.Read.TotalIOs
	}
	fmt.Printf("%.1f %d\n", sum, ios)
	return nil
}

// A result line of compare.sh: WORKLOAD SIDE ROUND VALUE RSS_KIB CPU_S
// WORK, where WORK is bytes read (dd), I/Os done (fio) or 1 (a copy).
type sample struct {
	value, cpu, work float64
	rss              int64
}

// comparison is one row of the table: chainfs against a peer on a
// workload, with the target for the median of pairwise ratios.
type comparison struct {
	workload, title, unit string
	side                  string // "chainfs", or "ceiling" to show the bound
	peer                  string // "qsd" or "ceiling"
	lowerBetter           bool   // times: the ratio is peer/chainfs
	target                float64
	cpuUnit               string  // what the CPU table counts per
	cpuScale              float64 // CPU seconds per work unit times this
}

var comparisons = []comparison{
	{"W1", "W1 dd bs=1M, 3-layer chain", "MiB/s", "chainfs", "qsd", false, 8, "ms/GiB", 1e3 * (1 << 30)},
	{"W1", "W1 dd bs=1M, 3-layer chain", "MiB/s", "chainfs", "ceiling", false, 0.8, "ms/GiB", 1e3 * (1 << 30)},
	{"W1", "W1 (the bound: ceiling)", "MiB/s", "ceiling", "qsd", false, 0, "ms/GiB", 1e3 * (1 << 30)},
	{"W2", "W2 dd bs=1M, zstd-compressed", "MiB/s", "chainfs", "qsd", false, 3, "ms/GiB", 1e3 * (1 << 30)},
	{"W3", "W3 dd bs=1M, zlib-compressed", "MiB/s", "chainfs", "qsd", false, 2, "ms/GiB", 1e3 * (1 << 30)},
	{"W4j1", "W4 fio 4k randread, 1 job", "IOPS", "chainfs", "qsd", false, 1.5, "us/read", 1e6},
	{"W4j1", "W4 fio 4k randread, 1 job", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"W4j1", "W4 1 job (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"W4j4", "W4 fio 4k randread, 4 jobs", "IOPS", "chainfs", "qsd", false, 1.5, "us/read", 1e6},
	{"W4j4", "W4 fio 4k randread, 4 jobs", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"W4j4", "W4 4 jobs (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"W6", "W6 cp --sparse=always, 4 TiB", "s", "chainfs", "qsd", true, 1, "ms/copy", 1e3},
}

const rssTargetKiB = 64 << 10

func cmdReport(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: report RESULTS.tsv")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	// data[workload][side][round]
	data := map[string]map[string]map[int]sample{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 7 || strings.HasPrefix(fs[0], "#") {
			continue
		}
		var s sample
		round, err := strconv.Atoi(fs[2])
		if err != nil {
			continue
		}
		s.value, _ = strconv.ParseFloat(fs[3], 64)
		s.rss, _ = strconv.ParseInt(fs[4], 10, 64)
		s.cpu, _ = strconv.ParseFloat(fs[5], 64)
		s.work, _ = strconv.ParseFloat(fs[6], 64)
		if data[fs[0]] == nil {
			data[fs[0]] = map[string]map[int]sample{}
		}
		if data[fs[0]][fs[1]] == nil {
			data[fs[0]][fs[1]] = map[int]sample{}
		}
		data[fs[0]][fs[1]][round] = s
	}
	if err := sc.Err(); err != nil {
		return err
	}

	fmt.Println("(rows marked \"the bound\" compare the ceiling, not chainfs, with qsd: in its chainfs column)")
	fmt.Printf("%-30s %-7s %-6s %10s %10s %9s %8s %-6s %9s %9s %s\n",
		"workload", "vs", "unit", "chainfs", "peer", "ratio", "target", "result", "cfs RSS", "peer RSS", "pairs")
	var maxRSS int64
	var cpuRows []string
	for _, c := range comparisons {
		a, b := data[c.workload][c.side], data[c.workload][c.peer]
		if len(a) == 0 && len(b) == 0 {
			continue
		}
		var av, bv, ratios, acpu, bcpu, cpuRatios []float64
		var arss, brss int64
		fails := 0
		perWork := func(s sample) float64 {
			if s.work <= 0 {
				return -1
			}
			return s.cpu / s.work * c.cpuScale
		}
		for _, s := range a {
			if s.value <= 0 {
				fails++
				continue
			}
			av = append(av, s.value)
			acpu = append(acpu, perWork(s))
			arss = max(arss, s.rss)
		}
		for _, s := range b {
			if s.value <= 0 {
				fails++
				continue
			}
			bv = append(bv, s.value)
			bcpu = append(bcpu, perWork(s))
			brss = max(brss, s.rss)
		}
		if c.side == "chainfs" {
			maxRSS = max(maxRSS, arss)
		}
		for r, s := range a {
			p, ok := b[r]
			if !ok || s.value <= 0 || p.value <= 0 {
				continue
			}
			if c.lowerBetter {
				ratios = append(ratios, p.value/s.value)
			} else {
				ratios = append(ratios, s.value/p.value)
			}
			if ac, pc := perWork(s), perWork(p); ac > 0 && pc > 0 {
				cpuRatios = append(cpuRatios, pc/ac)
			}
		}
		ratio := median(ratios)
		target, result := "-", "-"
		if c.target > 0 {
			target = fmt.Sprintf(">=%gx", c.target)
			result = "MISS"
			if len(ratios) > 0 && ratio >= c.target {
				result = "PASS"
			}
		}
		runs := strconv.Itoa(len(ratios))
		if fails > 0 {
			runs += fmt.Sprintf(" (%d failed)", fails)
		}
		fmt.Printf("%-30s %-7s %-6s %10s %10s %9s %8s %-6s %9s %9s %s\n",
			c.title, c.peer, c.unit, num(median(av), len(av)), num(median(bv), len(bv)),
			ratioStr(ratio, len(ratios)), target, result, mib(arss), mib(brss), runs)
		cpuRows = append(cpuRows, fmt.Sprintf("%-30s %-7s %-8s %10s %10s %12s",
			c.title, c.peer, c.cpuUnit, num(median(acpu), len(acpu)), num(median(bcpu), len(bcpu)),
			ratioStr(median(cpuRatios), len(cpuRatios))))
	}
	res := "PASS"
	if maxRSS > rssTargetKiB || maxRSS == 0 {
		res = "MISS"
	}
	fmt.Printf("%-30s %-7s %-6s %10s %10s %9s %8s %-6s\n",
		"chainfs peak RSS, any workload", "-", "MiB", fmt.Sprintf("%.1f", float64(maxRSS)/1024), "-", "-", "<=64MiB", res)

	fmt.Println()
	fmt.Println("CPU time of the serving daemon (user+sys, 10 ms ticks) per unit of work, medians;")
	fmt.Println("less disturbed by other load on the machine than wall time. ratio = peer/chainfs.")
	fmt.Printf("%-30s %-7s %-8s %10s %10s %12s\n", "workload", "vs", "unit", "chainfs", "peer", "ratio")
	for _, r := range cpuRows {
		fmt.Println(r)
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func num(v float64, n int) string {
	if n == 0 {
		return "n/a"
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func ratioStr(v float64, n int) string {
	if n == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", v)
}

func mib(kib int64) string {
	if kib == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fMiB", float64(kib)/1024)
}
