package layers

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultMaxDepth bounds the number of layers Open follows: a backing
// chain deeper than this is refused as hostile rather than followed.
const DefaultMaxDepth = 256

// Options tune Open. The zero value is ready to use.
type Options struct {
	// Format of the opened image; FormatUnknown probes it.
	Format Format
	// MaxDepth bounds the chain length (default DefaultMaxDepth).
	MaxDepth int
	// Log receives warnings (dirty images, probed backing formats), each
	// with the attribute "file" naming the image. Nil means slog.Default().
	Log *slog.Logger
	// ForceShare skips QEMU's image locks as `qemu-img -U` does: the chain
	// opens even while a VM writes to it (and may then read torn data).
	// Without it, Open refuses an image another process has open for
	// writing, and holds locks until Close so that none can open it so.
	ForceShare bool
	// Confine, when set, refuses any file of the chain (image, backing or
	// external data file) whose real path, symlinks resolved, lies outside
	// this directory: names inside images are chosen by whoever wrote them.
	Confine string
	// Cache holds the chain's metadata tables. Chains may share one; nil
	// gives the chain its own of DefaultCacheBytes.
	Cache *Cache
	// ResolvedBytes is the budget of the chain's resolved views (what each
	// layer reads as, through its backing chain, per window of guest
	// space); 0 means DefaultResolvedBytes.
	ResolvedBytes int64
	// Strict turns the damage QEMU reads through (see DamageKind: tables
	// and clusters past the end of their file, reserved bits) into errors:
	// a table needed at open refuses the image, anything else fails the
	// reads (and maps) of the guest range that needs it. Without it,
	// chainfs answers as QEMU does and logs each damaged structure once.
	Strict bool
}

func (o *Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.Default()
	}
	return o.Log
}

func (o *Options) resolvedBytes() int64 {
	if o.ResolvedBytes <= 0 {
		return DefaultResolvedBytes
	}
	return o.ResolvedBytes
}

// Chain is an opened backing chain, top first.
type Chain struct {
	Layers []*Layer
	cache  *Cache
}

// Top returns the opened image.
func (c *Chain) Top() *Layer { return c.Layers[0] }

// Close closes every file of the chain.
func (c *Chain) Close() error {
	var errs []error
	for _, l := range c.Layers {
		c.cache.forget(l.File)
		errs = append(errs, l.File.Close())
		if l.DataFile != nil {
			errs = append(errs, l.DataFile.Close())
		}
	}
	return errors.Join(errs...)
}

// Open opens the image at path read-only with its whole backing chain,
// resolving backing names as QEMU does: absolute names as they are,
// relative names joined onto the directory of the image that names them.
func Open(path string, opts *Options) (*Chain, error) {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.log()
	maxDepth := opts.MaxDepth
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	c := &Chain{cache: opts.Cache}
	if c.cache == nil {
		c.cache = NewCache(DefaultCacheBytes)
	}
	fail := func(err error) (*Chain, error) {
		c.Close()
		return nil, err
	}
	type fileID struct{ dev, ino uint64 }
	seen := map[fileID]string{}

	cur, format, probed := path, opts.Format, false
	for depth := 0; ; depth++ {
		if err := confined(opts.Confine, cur); err != nil {
			if depth > 0 {
				parent := c.Layers[depth-1]
				err = fmt.Errorf("%s: backing file %q: %w", parent.Path, parent.BackingFile, err)
			}
			return fail(err)
		}
		f, err := openHostFile(cur)
		if err != nil {
			if depth == 0 {
				return fail(err)
			}
			parent := c.Layers[depth-1]
			return fail(fmt.Errorf("%s: backing file %q: %w (%w)", parent.Path, parent.BackingFile, err, ErrChain))
		}
		if err := confinedFile(opts.Confine, f); err != nil {
			f.Close()
			if depth > 0 {
				parent := c.Layers[depth-1]
				err = fmt.Errorf("%s: backing file %q: %w", parent.Path, parent.BackingFile, err)
			}
			return fail(err)
		}
		if err := f.lockReadOnly(opts.ForceShare); err != nil {
			f.Close()
			return fail(err)
		}
		if id, ok := fileIdentity(f); ok {
			if first, dup := seen[fileID(id)]; dup {
				f.Close()
				parent := c.Layers[depth-1]
				return fail(fmt.Errorf("%s: backing file %q is %s again: backing chain loop (%w)", parent.Path, parent.BackingFile, first, ErrChain))
			}
			seen[fileID(id)] = cur
		}
		if format == FormatUnknown {
			format, err = Probe(f)
			if err != nil {
				f.Close()
				return fail(err)
			}
			if depth > 0 {
				probed = true
				parent := c.Layers[depth-1]
				log.Warn(fmt.Sprintf("%s: backing file %q has no recorded format; probed it as %s", parent.Path, parent.BackingFile, format),
					"file", parent.Path, "backing_file", parent.BackingFile, "format", format.String())
			}
		}
		l, err := openLayer(f, format, filepath.Dir(cur), opts, c.cache, log)
		if err != nil {
			f.Close()
			return fail(err)
		}
		if l.DataFile != nil {
			if err := l.DataFile.lockReadOnly(opts.ForceShare); err != nil {
				l.DataFile.Close()
				f.Close()
				return fail(err)
			}
		}
		l.Index = depth
		l.ProbedBacking = probed
		c.Layers = append(c.Layers, l)
		if depth > 0 {
			c.Layers[depth-1].Backing = l
		}
		if l.BackingFile == "" {
			newResolver(c.Layers, opts.resolvedBytes())
			return c, nil
		}
		if depth+1 >= maxDepth {
			return fail(fmt.Errorf("%s: backing chain is deeper than %d layers (%w)", path, maxDepth, ErrChain))
		}
		next, err := resolveBacking(cur, l.BackingFile)
		if err != nil {
			return fail(err)
		}
		format, probed = FormatUnknown, false
		// An empty recorded format (or one that a NUL ends at once) is no
		// format: QEMU probes the backing file.
		if l.BackingFormat != "" {
			if format, err = ParseFormat(l.BackingFormat); err != nil {
				return fail(&FormatError{File: l.Path, Msg: fmt.Sprintf("backing format %q of %q is not supported (only raw and qcow2)", l.BackingFormat, l.BackingFile), Err: ErrUnsupported})
			}
		}
		cur = next
	}
}

// OpenImage opens one image of the given format from f, without its
// backing file: Layer.ReadAt then reads unallocated ranges as zero. It is
// what Open uses for each layer; dir resolves an external data file name
// (empty: external data files are refused). The image gets a cache of its
// own and logs to slog.Default().
func OpenImage(f *HostFile, format Format, dir string) (*Layer, error) {
	return OpenImageWith(f, format, dir, nil)
}

// OpenImageWith is OpenImage with options: Strict, Confine, Log and Cache
// apply (nil means the defaults).
func OpenImageWith(f *HostFile, format Format, dir string, opts *Options) (*Layer, error) {
	if opts == nil {
		opts = &Options{}
	}
	cache := opts.Cache
	if cache == nil {
		cache = NewCache(DefaultCacheBytes)
	}
	l, err := openLayer(f, format, dir, opts, cache, opts.log())
	if err != nil {
		return nil, err
	}
	newResolver([]*Layer{l}, opts.resolvedBytes())
	return l, nil
}

func openLayer(f *HostFile, format Format, dir string, opts *Options, cache *Cache, log *slog.Logger) (*Layer, error) {
	l := &Layer{Path: f.Name, Format: format, File: f}
	switch format {
	case FormatRaw:
		l.raw = openRaw(f)
		l.Size = l.raw.size
		l.ClusterSize = 512
		return l, nil
	case FormatQcow2:
	default:
		return nil, unsupported(f.Name, "format %s is not supported", format)
	}
	hdr, err := DecodeHeader(f.Name, f, f.Size())
	if err != nil {
		return nil, err
	}
	if hdr.IncompatibleFeatures&IncompatDirty != 0 {
		log.Warn(f.Name+": image was not closed cleanly (dirty bit set); reading it read-only as QEMU does", "file", f.Name)
	}
	if hdr.IncompatibleFeatures&IncompatCorrupt != 0 {
		log.Warn(f.Name+": image is marked corrupt; reading it read-only, data may be inconsistent", "file", f.Name)
	}
	warnCutNames(hdr, f.Name, log)
	var data *HostFile
	if hdr.ExternalData() {
		if dir == "" {
			return nil, unsupported(f.Name, "external data file %q: no directory to resolve it in", hdr.DataFile)
		}
		// A relative name is taken relative to the image's directory,
		// as backing names are. QEMU (7.2 and 10.0) opens it relative to
		// its working directory, so it opens such an image only from
		// the image's directory, where both agree; anywhere else QEMU
		// fails to open it, and the image's own directory is what
		// `qemu-img create -o data_file=NAME` meant.
		p, err := resolveBacking(filepath.Join(dir, "x"), hdr.DataFile)
		if err != nil {
			return nil, err
		}
		if err := confined(opts.Confine, p); err != nil {
			return nil, fmt.Errorf("%s: external data file %q: %w", f.Name, hdr.DataFile, err)
		}
		if data, err = openHostFile(p); err != nil {
			return nil, &FormatError{File: f.Name, Msg: fmt.Sprintf("external data file %q", hdr.DataFile), Err: err}
		}
		if err := confinedFile(opts.Confine, data); err != nil {
			data.Close()
			return nil, fmt.Errorf("%s: external data file %q: %w", f.Name, hdr.DataFile, err)
		}
	}
	img := newQcow2Image(f, hdr, data, cache, opts.Strict, log)
	// QEMU reads the refcount table at open (qcow2_refcount_init), as zero
	// past the end of the file; chainfs reads it only when it needs
	// refcounts, but notes (or, strict, refuses) its damage now.
	err = img.tablePastEOF(DamageRefcountTable, "refcount table", hdr.RefcountTableOffset,
		int64(hdr.RefcountTableClusters)*img.csize, fmt.Sprintf("%d clusters", hdr.RefcountTableClusters))
	var q *qcow2View
	if err == nil {
		// DecodeHeader checked the L1 table against QEMU's limits.
		q, err = img.view(int64(hdr.Size), hdr.L1TableOffset, hdr.L1Size)
	}
	if err == nil {
		// What QEMU reads of the image at open besides the header and
		// the L1 table (snapshot.go, bitmap.go).
		l.snaps, l.bitmaps, err = readSnapshotsAndBitmaps(img, q.size, log)
	}
	if err != nil {
		if data != nil {
			data.Close()
		}
		return nil, err
	}
	l.q = q
	l.Header = hdr
	l.DataFile = data
	l.Size = q.size
	l.ClusterSize = q.csize
	l.BackingFile = hdr.BackingFile
	l.BackingFormat = hdr.BackingFormat
	return l, nil
}

// warnCutNames warns when a recorded name held a NUL: QEMU, and chainfs
// after it, uses the name up to the NUL only.
func warnCutNames(h *Header, name string, log *slog.Logger) {
	if h.BackingFileOffset != 0 && uint32(len(h.BackingFile)) < h.BackingFileSize {
		log.Warn(fmt.Sprintf("%s: the recorded backing file name (%d bytes) ends at a NUL after %d; using %q, as QEMU does",
			name, h.BackingFileSize, len(h.BackingFile), h.BackingFile), "file", name, "backing_file", h.BackingFile)
	}
	if h.backingFmtCut {
		log.Warn(fmt.Sprintf("%s: the recorded backing format ends at a NUL; using %q, as QEMU does", name, h.BackingFormat),
			"file", name, "backing_format", h.BackingFormat)
	}
}

// resolveBacking resolves a backing or data file name recorded in the
// image at parent, as QEMU's path_combine does: a relative name is
// appended, as text, to the directory part of parent. Not filepath.Join,
// which cleans "dir/link/../base" to "dir/base" where the kernel (and so
// QEMU) follows the symlink first and may reach another file.
func resolveBacking(parent, name string) (string, error) {
	if hasProtocol(name) {
		return "", unsupported(parent, "backing file %q names a protocol; only local files are supported", name)
	}
	if filepath.IsAbs(name) {
		return name, nil
	}
	return parent[:strings.LastIndexByte(parent, '/')+1] + name, nil
}

// hasProtocol follows QEMU's path_has_protocol: a colon before any slash
// ("nbd:...", "json:{...}", "https://...").
func hasProtocol(name string) bool {
	i := strings.IndexAny(name, ":/")
	return i >= 0 && name[i] == ':'
}

func fileIdentity(f *HostFile) (struct{ dev, ino uint64 }, bool) {
	var id struct{ dev, ino uint64 }
	if f.file == nil {
		return id, false
	}
	st, err := f.file.Stat()
	if err != nil {
		return id, false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return id, false
	}
	id.dev, id.ino = uint64(sys.Dev), sys.Ino
	return id, true
}

// ErrConfined: a chain member lies outside the directory Options.Confine.
var ErrConfined = errors.New("outside the confining directory")

// confined checks that the real path of name lies inside dir ("" allows
// everything), before name is opened: a file outside is never opened. A
// name that does not resolve is left for open to report.
func confined(dir, name string) error {
	if dir == "" {
		return nil
	}
	root, err := confiningRoot(dir)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return nil
	}
	if real, err = filepath.Abs(real); err != nil {
		return nil
	}
	return inside(root, name, real)
}

// confinedFile checks again, after opening, that the file f has open lies
// inside dir, by the path the kernel gives its descriptor: a symlink
// swapped between confined and the open cannot lead outside. Without
// /proc, confined's check stands alone.
func confinedFile(dir string, f *HostFile) error {
	if dir == "" || f.fd < 0 {
		return nil
	}
	root, err := confiningRoot(dir)
	if err != nil {
		return err
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.fd))
	if err != nil || !filepath.IsAbs(real) {
		return nil
	}
	return inside(root, f.Name, real)
}

func confiningRoot(dir string) (string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err == nil {
		root, err = filepath.Abs(root)
	}
	if err != nil {
		return "", fmt.Errorf("confining directory %s: %w", dir, err)
	}
	return root, nil
}

// inside reports an ErrConfined error naming name unless real lies in root.
func inside(root, name, real string) error {
	rel, err := filepath.Rel(root, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%s: real path %s lies outside %s (%w)", name, real, root, ErrConfined)
	}
	return nil
}
