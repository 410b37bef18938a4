package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

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
				Bytes    int64   `json:"io_bytes"`
				BW       float64 `json:"bw_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if len(out.Jobs) == 0 {
		return fmt.Errorf("%s: no jobs", args[0])
	}
	sum, ios, bw, bytes := 0.0, int64(0), 0.0, int64(0)
	for _, j := range out.Jobs {
		if j.Error != 0 {
			return fmt.Errorf("%s: fio job error %d", args[0], j.Error)
		}
		sum += j.Read.IOPS
		ios += j.Read.TotalIOs
		bw += j.Read.BW
		bytes += j.Read.Bytes
	}
	fmt.Printf("%.1f %d %.1f %d\n", sum, ios, bw/(1<<20), bytes)
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
	{"W2", "W2 dd bs=1M, zstd-compressed", "MiB/s", "chainfs", "qsd", false, 2.5, "ms/GiB", 1e3 * (1 << 30)},
	{"W3", "W3 dd bs=1M, zlib-compressed", "MiB/s", "chainfs", "qsd", false, 2, "ms/GiB", 1e3 * (1 << 30)},
	{"W3R", "W3R fio 4k randread, zlib", "IOPS", "chainfs", "qsd", false, 2, "us/read", 1e6},
	{"W4j1", "W4 fio 4k randread, 1 job", "IOPS", "chainfs", "qsd", false, 1.5, "us/read", 1e6},
	{"W4j1", "W4 fio 4k randread, 1 job", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"W4j1", "W4 1 job (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"W4j4", "W4 fio 4k randread, 4 jobs", "IOPS", "chainfs", "qsd", false, 1.5, "us/read", 1e6},
	{"W4j4", "W4 fio 4k randread, 4 jobs", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"W4j4", "W4 4 jobs (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"W6", "W6 cp --sparse=always, 4 TiB", "s", "chainfs", "qsd", true, 1, "ms/copy", 1e3},
	{"DQ4k", "DQ 4k randread, iodepth 32", "IOPS", "chainfs", "qsd", false, 1, "us/read", 1e6},
	{"DQ4k", "DQ 4k randread, iodepth 32", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"DQ4k", "DQ 4k (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"DQ64k", "DQ 64k randread, iodepth 16", "IOPS", "chainfs", "qsd", false, 1.2, "us/read", 1e6},
	{"DQ64k", "DQ 64k randread, iodepth 16", "IOPS", "chainfs", "ceiling", false, 0, "us/read", 1e6},
	{"DQ64k", "DQ 64k (the bound: ceiling)", "IOPS", "ceiling", "qsd", false, 0, "us/read", 1e6},
	{"DQ1M", "DQ 1M seq read, iodepth 4", "MiB/s", "chainfs", "qsd", false, 2.5, "ms/GiB", 1e3 * (1 << 30)},
	{"DQ1M", "DQ 1M seq read, iodepth 4", "MiB/s", "chainfs", "ceiling", false, 0, "ms/GiB", 1e3 * (1 << 30)},
	{"DQ1M", "DQ 1M (the bound: ceiling)", "MiB/s", "ceiling", "qsd", false, 0, "ms/GiB", 1e3 * (1 << 30)},
	{"EXT4", "EXT4 tar of Go's tree, loop", "s", "chainfs", "qsd", true, 2.5, "ms/run", 1e3},
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

// cmdCacheReport prints, per workload, the medians of the per-run cache
// counters compare.sh recorded (WORKLOAD ROUND HITS MISSES RA_CLUSTERS
// RA_HITS), with the hit rate, for workloads that read compressed
// clusters.
func cmdCacheReport(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: cachereport CACHE.tsv")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	type runs struct{ hits, misses, ra, rahits, rate []float64 }
	by := map[string]*runs{}
	var order []string
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 6 {
			continue
		}
		v := make([]float64, 4)
		for i := range v {
			v[i], _ = strconv.ParseFloat(fs[2+i], 64)
		}
		if v[0]+v[1] == 0 {
			continue // no compressed cluster read
		}
		r := by[fs[0]]
		if r == nil {
			r = &runs{}
			by[fs[0]] = r
			order = append(order, fs[0])
		}
		r.hits = append(r.hits, v[0])
		r.misses = append(r.misses, v[1])
		r.ra = append(r.ra, v[2])
		r.rahits = append(r.rahits, v[3])
		r.rate = append(r.rate, v[0]/(v[0]+v[1]))
	}
	fmt.Printf("  %-12s %9s %9s %9s %11s %11s\n", "workload", "hit rate", "hits", "misses", "read ahead", "of them read")
	for _, w := range order {
		r := by[w]
		fmt.Printf("  %-12s %8.1f%% %9.0f %9.0f %11.0f %11.0f\n", w, 100*median(r.rate), median(r.hits), median(r.misses), median(r.ra), median(r.rahits))
	}
	return nil
}
