package status_test

import (
	"io"
	"os"
	"testing"
	"time"
	"runtime/pprof"

	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

func TestDeepProf(t *testing.T) {
	top := os.Getenv("DEEPTOP")
	t0 := time.Now()
	c, err := layers.Open(top, nil)
	if err != nil { t.Fatal(err) }
	status.WriteMapJSON(io.Discard, c.Top())
	c.Close()
	t.Logf("open + single map: %v", time.Since(t0))
	t0 = time.Now()
	c, err = layers.Open(top, nil)
	if err != nil { t.Fatal(err) }
	defer c.Close()
	f, _ := os.Create("/tmp/deep.prof")
	pprof.StartCPUProfile(f)
	for _, l := range c.Layers {
		status.WriteMapJSON(io.Discard, l)
		status.WriteDepth(io.Discard, l)
		status.DataBytes(l)
	}
	pprof.StopCPUProfile()
	t.Logf("open + every map, depth, databytes: %v", time.Since(t0))
}
