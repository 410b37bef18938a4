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
//	benchtool fioiops JSON                      "IOPS TOTAL_IOS MIB_S TOTAL_BYTES" of a fio --output-format=json run
//	benchtool diffclusters A B CLUSTER          offsets of the CLUSTER-sized blocks where files A and B differ
//	benchtool hwm PID                           VmHWM of PID in KiB
//	benchtool report RESULTS.tsv                the comparison table
//	benchtool cachereport CACHE.tsv             chainfs's cluster cache counters per workload
//
// SIZE accepts the suffixes K, M, G, T (powers of 1024).
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) < 2 {
		die("usage: benchtool random|stripes|text|diffclusters|drop|resident|run|quiet|fioiops|hwm|report|cachereport ...")
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
	case "diffclusters":
		err = cmdDiffClusters(args)
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
	case "cachereport":
		err = cmdCacheReport(args)
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
