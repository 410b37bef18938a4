package qemudiff

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// The differential fuzzer: it breaks one structure of an image of every
// kind the tests build (the header, the L1 table, an L2 table, the refcount
// table or a refcount block, the snapshot table, the bitmap directory,
// compressed data) with random bytes or a chosen 64-bit value, and holds
// chainfs against QEMU 7.2 and 10.0 on the result: the same verdict at
// open, and wherever QEMU opens the image the same sectors failing to
// read, the same bytes in the others, the same map and depth or the same
// failure of them. Strict mode is held against the default on the way.
//
// A case is a seed: it picks the image, the region and the change. CI runs
// a bounded number of them; for long runs, by hand:
//
//	CHAINFS_DIFF_CASES=5000 CHAINFS_DIFF_SEED=7 go test ./internal/qemudiff -run TestDifferential -timeout 0
//	go test ./internal/qemudiff -run XXX -fuzz FuzzDifferential -fuzztime 1h
//
// and CHAINFS_DIFF_CASE=N re-runs case N of a seed alone, keeping the
// broken image under CHAINFS_DIFF_KEEP=DIR if set. The test logs a table of
// cases per region and outcome.

// defaultCases is what CI runs: about a minute on two busy cores.
const defaultCases = 120

// knownGaps are regions where chainfs does not yet make all of QEMU's
// open-time checks: there, chainfs opening an image QEMU refuses is
// counted, not failed. None now: the snapshot table and bitmap directory
// checks came with internal snapshots and bitmaps (issue 9).
var knownGaps = map[string]string{}

func envInt(name string, def uint64) uint64 {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.ParseUint(v, 0, 64)
		if err == nil {
			return n
		}
	}
	return def
}

// outcome of one case, for the report.
type outcome struct {
	region, verdict string
	damage, differs bool
	gap             bool // differs only where knownGaps says so
}

type tally struct {
	mu     sync.Mutex
	counts map[string]map[string]int // region -> column -> count
}

func (ta *tally) add(o outcome) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.counts == nil {
		ta.counts = map[string]map[string]int{}
	}
	c := ta.counts[o.region]
	if c == nil {
		c = map[string]int{}
		ta.counts[o.region] = c
	}
	c["cases"]++
	c[o.verdict]++
	if o.damage {
		c["damage noticed"]++
	}
	switch {
	case o.gap:
		c["known gap"]++
	case o.differs:
		c["DIFFERENT"]++
	}
}

var columns = []string{"cases", "refused", "clean", "reads fail", "map fails", "reads and map fail", "damage noticed", "known gap", "DIFFERENT"}

func (ta *tally) table() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "region\t%s\t\n", strings.Join(columns, "\t"))
	total := map[string]int{}
	for _, r := range regionNames {
		c := ta.counts[r]
		if c == nil {
			continue
		}
		fmt.Fprintf(w, "%s", r)
		for _, col := range columns {
			fmt.Fprintf(w, "\t%d", c[col])
			total[col] += c[col]
		}
		fmt.Fprintln(w, "\t")
	}
	fmt.Fprintf(w, "all")
	for _, col := range columns {
		fmt.Fprintf(w, "\t%d", total[col])
	}
	fmt.Fprintln(w, "\t")
	w.Flush()
	return b.String()
}

// runCase builds, breaks and compares case seed/n: it picks a region,
// then an image that has one, so that structures only some images have
// (snapshot tables, bitmap directories, compressed data) get their share.
func runCase(t *testing.T, qs []imagetest.QEMU, seed, n uint64) outcome {
	rng := rand.New(rand.NewPCG(seed, n))
	region := regionNames[rng.IntN(len(regionNames))]
	var with []int
	for i := range recipes {
		if _, lay := recipeLayout(t, i); len(lay.regions[region]) > 0 {
			with = append(with, i)
		}
	}
	ri := with[rng.IntN(len(with))]
	src, top := recipeDir(t, ri)
	dir := t.TempDir()
	copyDir(t, src, dir)
	path := filepath.Join(dir, top)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, lay := recipeLayout(t, ri)
	m := mutate(rng, lay, b, region)
	imagetest.Patch(t, path, m.off, m.data)
	desc := fmt.Sprintf("case %d of seed %d: %s; %s", n, seed, recipes[ri].name, m)
	if keep := os.Getenv("CHAINFS_DIFF_KEEP"); keep != "" {
		copyDir(t, dir, keep)
	}

	r := Compare(t, qs, path, "qcow2", nil)
	o := outcome{region: region, damage: r.Damage.Total() > 0, verdict: verdictOf(r.QEMU[0])}
	if !r.Same() {
		o.differs = true
		if why, ok := knownGaps[region]; ok && onlyOpenGap(r) {
			o.gap = true
			t.Logf("%s\nknown gap (%s):\n%s", desc, why, r.Report(t, qs))
			return o
		}
		t.Errorf("%s\nreproduce: CHAINFS_DIFF_SEED=%d CHAINFS_DIFF_CASE=%d go test ./internal/qemudiff -run TestDifferential\n%s",
			desc, seed, n, r.Report(t, qs))
	}
	return o
}

// onlyOpenGap: the only difference is that chainfs opens what every QEMU
// refuses.
func onlyOpenGap(r *Result) bool {
	if !r.Default.Opened || len(r.StrictDiffs) > 0 {
		return false
	}
	for _, v := range r.QEMU {
		if v.Opened {
			return false
		}
	}
	return true
}

func verdictOf(v View) string {
	switch {
	case !v.Opened:
		return "refused"
	case len(v.Failed) > 0 && (v.MapErr != "" || v.DepthErr != ""):
		return "reads and map fail"
	case len(v.Failed) > 0:
		return "reads fail"
	case v.MapErr != "" || v.DepthErr != "":
		return "map fails"
	}
	return "clean"
}

// TestDifferential runs CHAINFS_DIFF_CASES cases (default defaultCases)
// of seed CHAINFS_DIFF_SEED (default 1), or only case CHAINFS_DIFF_CASE.
func TestDifferential(t *testing.T) {
	imagetest.Need(t)
	qs := imagetest.Oracles(t)
	seed := envInt("CHAINFS_DIFF_SEED", 1)
	cases := envInt("CHAINFS_DIFF_CASES", defaultCases)
	first := uint64(0)
	if one := envInt("CHAINFS_DIFF_CASE", ^uint64(0)); one != ^uint64(0) {
		first, cases = one, 1
	}
	var ta tally
	t.Run("cases", func(t *testing.T) {
		for n := first; n < first+cases; n++ {
			t.Run(fmt.Sprint(n), func(t *testing.T) {
				t.Parallel()
				ta.add(runCase(t, qs, seed, n))
			})
		}
	})
	t.Logf("seed %d, %d cases, per region and outcome (QEMU's verdict; chainfs agreeing but where DIFFERENT):\n%s", seed, cases, ta.table())
}

// TestRecipesHealthy holds every image the fuzzer breaks, unbroken,
// against both QEMUs: the same answers, no damage noticed, and strict mode
// answering as the default does. A healthy image QEMU wrote is never
// damage (a cluster with subclusters, for one, may end past the end of the
// file where its last allocated subcluster does).
func TestRecipesHealthy(t *testing.T) {
	imagetest.Need(t)
	qs := imagetest.Oracles(t)
	for i, rc := range recipes {
		t.Run(rc.name, func(t *testing.T) {
			path, _ := recipeLayout(t, i)
			r := Compare(t, qs, path, "qcow2", nil)
			if !r.Same() {
				t.Errorf("differs:\n%s", r.Report(t, qs))
			}
			if r.Damage.Total() != 0 {
				t.Errorf("damage noticed in a healthy image: %v", r.Damage)
			}
			if !r.Default.Opened || len(r.Default.Failed) > 0 || r.Default.MapErr != "" || r.Default.DepthErr != "" {
				t.Errorf("the healthy image does not read whole: %+v", r.Default.OpenErr)
			}
		})
	}
}

// FuzzDifferential is TestDifferential under go's fuzzer: each input is
// one case seed.
func FuzzDifferential(f *testing.F) {
	for i := range uint64(8) {
		f.Add(i)
	}
	f.Fuzz(func(t *testing.T, seed uint64) {
		qs := imagetest.Oracles(t)
		runCase(t, qs, seed, 0)
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.root != "" {
		os.RemoveAll(built.root)
	}
	os.Exit(code)
}

// TestZeroSize: an image of no bytes (found by the fuzzer, which made the
// virtual size 0): qemu-img map prints one entry of length 0 for it.
func TestZeroSize(t *testing.T) {
	imagetest.Need(t)
	qs := imagetest.Oracles(t)
	dir := t.TempDir()
	for _, f := range []string{"qcow2", "raw"} {
		// Create omits a size of 0.
		p := filepath.Join(dir, "empty."+f)
		imagetest.QemuImg(t, "create", "-q", "-f", f, p, "0")
		if r := Compare(t, qs, p, f, nil); !r.Same() {
			t.Errorf("%s of 0 bytes differs:\n%s", f, r.Report(t, qs))
		}
	}
}
