package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

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
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "chainfs %s: want one IMAGE, got %d arguments\n", fs.Name(), len(pos))
		fs.Usage()
		return nil, exitUsage
	}
	if err := c.limits.check(); err != nil {
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

// layerInfo is one layer in `chainfs info --json`; the names follow
// `qemu-img info --output=json`.
type layerInfo struct {
	Depth         int    `json:"depth"`
	Filename      string `json:"filename"`
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual-size"`
	ClusterSize   int64  `json:"cluster-size"`
	BackingFile   string `json:"backing-filename,omitempty"`
	BackingFormat string `json:"backing-filename-format,omitempty"`
	// BackingProbed: the image naming this one recorded no format for
	// it, so it was probed.
	BackingProbed bool `json:"format-probed,omitempty"`
	// DataFile is the external data file as opened (its name resolved),
	// and DataFileName the name recorded in the image.
	DataFile     string `json:"data-file,omitempty"`
	DataFileName string `json:"data-file-name,omitempty"`
}

func cmdInfo(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("info", "info [--json] IMAGE", stderr)
	var c chainFlags
	c.register(fset, false)
	asJSON := fset.Bool("json", false, "print JSON (an array, top layer first)")
	chain, code := c.open(fset, args, stderr)
	if chain == nil {
		return code
	}
	defer chain.Close()
	var infos []layerInfo
	for _, l := range chain.Layers {
		i := layerInfo{
			Depth: l.Index, Filename: l.Path, Format: l.Format.String(),
			VirtualSize: l.Size, ClusterSize: l.ClusterSize,
			BackingFile: l.BackingFile, BackingFormat: l.BackingFormat,
			BackingProbed: l.ProbedBacking,
		}
		if l.DataFile != nil {
			i.DataFile, i.DataFileName = l.DataFile.Name, l.Header.DataFile
		}
		infos = append(infos, i)
	}
	bw := bufio.NewWriter(stdout)
	if *asJSON {
		enc := json.NewEncoder(bw)
		enc.SetIndent("", "  ")
		enc.Encode(infos)
	} else {
		tw := tabwriter.NewWriter(bw, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "DEPTH\tFILE\tFORMAT\tVIRTUAL SIZE\tCLUSTER SIZE\tBACKING FILE\tBACKING FORMAT")
		for _, i := range infos {
			bf, bfmt := i.BackingFile, i.BackingFormat
			if bf == "" {
				bf = "-"
			}
			if bfmt == "" {
				bfmt = "-"
				if bf != "-" {
					bfmt = "(probed)"
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i.Depth, i.Filename, i.Format,
				humanSize(i.VirtualSize), strconv.FormatInt(i.ClusterSize, 10), bf, bfmt)
		}
		tw.Flush()
	}
	if err := bw.Flush(); err != nil {
		fmt.Fprintf(stderr, "chainfs info: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// humanSize prints n as qemu-img info does: "512 KiB (524288 bytes)".
func humanSize(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d bytes", n)
	}
	s := strconv.FormatFloat(v, 'f', 3, 64)
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return fmt.Sprintf("%s %s (%d bytes)", s, units[u], n)
}

func cmdMap(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("map", "map [--layer N] IMAGE\n\nPrints what qemu-img map --output=json prints for the layer.\n", stderr)
	var c chainFlags
	c.register(fset, true)
	return renderLayer(fset, &c, args, stdout, stderr, status.WriteMapJSON)
}

func cmdDepth(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("depth", "depth [--layer N] [--json] IMAGE\n\nPrints what nbdinfo --map=qemu:allocation-depth prints for the layer served by qemu-nbd -A.\n", stderr)
	var c chainFlags
	c.register(fset, true)
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
	if err := render(stdout, l); err != nil {
		fmt.Fprintf(stderr, "chainfs %s: layer %d (%s): %v\n", fset.Name(), l.Index, l.Path, err)
		return exitFailure
	}
	return exitOK
}
