package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/internal/slogrus"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// chainFlags are the flags of the commands that read a chain without
// mounting it.
type chainFlags struct {
	format     string
	layer      int
	forceShare bool
	strict     bool
	limits     limitFlags
	// check, when set, validates the command's own flags once parsed.
	check func() error
	// snapshot is --snapshot of map and depth (inner.go).
	snapshot string
	// more names the positional arguments the command takes after IMAGE;
	// open fills moreArgs with them.
	more, moreArgs []string
}

// strictUsage describes --strict, for every command that has it.
const strictUsage = "fail reads (and refuse images) where QEMU reads through damage that qemu-img check reports: " +
	"tables or clusters past the end of their file, reserved bits (default: read as QEMU does, and log it)"

func (c *chainFlags) register(fs *flag.FlagSet, withLayer bool) {
	fs.StringVar(&c.format, "format", "", "`FORMAT` of IMAGE: qcow2 or raw (default: probe)")
	fs.BoolVar(&c.forceShare, "U", false, "same as --force-share")
	fs.BoolVar(&c.forceShare, "force-share", false, "ignore QEMU's image locks, as qemu-img -U (read even while a VM writes)")
	fs.BoolVar(&c.strict, "strict", false, strictUsage)
	c.limits.register(fs)
	if withLayer {
		fs.IntVar(&c.layer, "layer", 0, "the layer `N` to show: 0 is IMAGE, 1 its backing file, ...")
	}
}

// limitFlags bound what names inside an image may make chainfs open:
// --confine and --max-depth, shared by every command that opens a chain.
type limitFlags struct {
	confine  string
	maxDepth int
}

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.confine, "confine", "", "refuse any file of the chain (image, backing or data file) whose real path, symlinks resolved, lies outside `DIR`")
	fs.IntVar(&l.maxDepth, "max-depth", layers.DefaultMaxDepth, "refuse a backing chain of more than `N` layers")
}

// check validates the flags: a confining directory that does not exist
// would refuse everything, with a less clear message.
func (l *limitFlags) check() error {
	if l.maxDepth < 1 {
		return fmt.Errorf("--max-depth %d: want at least 1", l.maxDepth)
	}
	if l.confine != "" {
		st, err := os.Stat(l.confine)
		if err != nil {
			return fmt.Errorf("--confine: %v", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("--confine %s: not a directory", l.confine)
		}
	}
	return nil
}

// open parses the command line and opens the chain of its one IMAGE.
// Warnings (a dirty image, a probed backing format) go to stderr.
func (c *chainFlags) open(fs *flag.FlagSet, args []string, stderr io.Writer) (*layers.Chain, int) {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, flagExit(err)
	}
	if len(pos) != 1+len(c.more) {
		fmt.Fprintf(stderr, "chainfs %s: want %s, got %d arguments\n", fs.Name(), strings.Join(append([]string{"one IMAGE"}, c.more...), " and "), len(pos))
		fs.Usage()
		return nil, exitUsage
	}
	c.moreArgs = pos[1:]
	err = c.limits.check()
	if err == nil && c.check != nil {
		err = c.check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "chainfs %s: %v\n", fs.Name(), err)
		return nil, exitUsage
	}
	var f layers.Format
	if c.format != "" {
		if f, err = layers.ParseFormat(c.format); err != nil {
			fmt.Fprintf(stderr, "chainfs %s: --format: %v\n", fs.Name(), err)
			return nil, exitUsage
		}
	}
	log := logrus.New()
	log.SetOutput(stderr)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	chain, err := layers.Open(pos[0], &layers.Options{Format: f, Log: slogrus.New(log), ForceShare: c.forceShare,
		Confine: c.limits.confine, MaxDepth: c.limits.maxDepth, Strict: c.strict})
	if err != nil {
		fmt.Fprintf(stderr, "chainfs %s: %v\n", fs.Name(), err)
		return nil, exitImage
	}
	return chain, exitOK
}

// pick returns the layer --layer names.
func (c *chainFlags) pick(chain *layers.Chain, name string, stderr io.Writer) (*layers.Layer, int) {
	if c.layer < 0 || c.layer >= len(chain.Layers) {
		fmt.Fprintf(stderr, "chainfs %s: --layer %d: the chain has layers 0 to %d\n", name, c.layer, len(chain.Layers)-1)
		return nil, exitUsage
	}
	return chain.Layers[c.layer], exitOK
}

const infoSynopsis = `info [--json] IMAGE

Prints what qemu-img info --backing-chain prints for IMAGE and every layer
below it, top first; with --json (or --output=json) what qemu-img info
--output=json --backing-chain prints, the same keys and values. What
chainfs adds (the layer's depth, whether its format was probed, the path
of its external data file) is under the key "chainfs" of each layer.

options:`

func cmdInfo(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("info", infoSynopsis, stderr)
	var c chainFlags
	c.register(fset, false)
	asJSON := fset.Bool("json", false, "print JSON: an array, top layer first")
	output := fset.String("output", "human", "output `FORMAT`: human or json (as qemu-img's --output)")
	fset.Bool("backing-chain", true, "accepted for qemu-img's command line: chainfs info always describes the whole chain")
	check := fset.Bool("check", false, "read every table of every layer (as a map of each would) and count the damage QEMU reads through; without it, only what opening the chain read is looked at")
	c.check = func() error {
		switch *output {
		case "json":
			*asJSON = true
		case "human":
		default:
			return fmt.Errorf("--output %q: want human or json", *output)
		}
		return nil
	}
	chain, code := c.open(fset, args, stderr)
	if chain == nil {
		return code
	}
	defer chain.Close()
	if *check {
		for _, l := range chain.Layers {
			l.ScanDamage()
		}
	}
	infos := describeChain(chain)
	write := writeInfoText
	if *asJSON {
		write = writeInfoJSON
	}
	if err := write(stdout, infos); err != nil {
		fmt.Fprintf(stderr, "chainfs info: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func cmdMap(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("map", "map [--layer N] [--snapshot SNAP] IMAGE\n\nPrints what qemu-img map --output=json prints for the layer, or for its internal snapshot SNAP.\n", stderr)
	var c chainFlags
	c.register(fset, true)
	c.registerSnapshot(fset)
	return renderLayer(fset, &c, args, stdout, stderr, status.WriteMapJSON)
}

func cmdDepth(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("depth", "depth [--layer N] [--snapshot SNAP] [--json] IMAGE\n\nPrints what nbdinfo --map=qemu:allocation-depth prints for the layer (or its internal snapshot SNAP) served by qemu-nbd -A.\n", stderr)
	var c chainFlags
	c.register(fset, true)
	c.registerSnapshot(fset)
	asJSON := fset.Bool("json", false, "print what nbdinfo --json prints")
	render := func(w io.Writer, l *layers.Layer) error {
		if *asJSON {
			return status.WriteDepthJSON(w, l)
		}
		return status.WriteDepth(w, l)
	}
	return renderLayer(fset, &c, args, stdout, stderr, render)
}

func renderLayer(fset *flag.FlagSet, c *chainFlags, args []string, stdout, stderr io.Writer, render func(io.Writer, *layers.Layer) error) int {
	chain, code := c.open(fset, args, stderr)
	if chain == nil {
		return code
	}
	defer chain.Close()
	l, code := c.pick(chain, fset.Name(), stderr)
	if l == nil {
		return code
	}
	if l, code = c.view(l, fset.Name(), stderr); l == nil {
		return code
	}
	if err := render(stdout, l); err != nil {
		fmt.Fprintf(stderr, "chainfs %s: layer %d (%s): %v\n", fset.Name(), l.Index, l.Path, err)
		return exitFailure
	}
	return exitOK
}
