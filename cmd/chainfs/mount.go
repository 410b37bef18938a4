package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	chainfs "github.com/chainfs/chainfs/fs"
	"github.com/chainfs/chainfs/internal/slogrus"
	"github.com/chainfs/chainfs/layers"
)

const mountSynopsis = `mount [options] IMAGE MOUNTPOINT

Mounts the backing chain of IMAGE read-only at MOUNTPOINT and returns once
the mount is ready, serving it in the background until "chainfs umount
MOUNTPOINT" (or fusermount3 -u). -o takes mount options, comma-separated:
  allow_other, allow_root  let other users in (implies default_permissions)
  default_permissions      let the kernel check the files' modes and owners
  fsname=NAME              the source shown in /proc/mounts (default: IMAGE)
  max_read=BYTES           the largest read request (default 1 MiB)
  noexec, exec, auto_unmount  passed to fusermount3
  debug                    same as --debug-fuse
  force_share              same as --force-share
  strict                   same as --strict
  confine=DIR              same as --confine DIR
  max_depth=N              same as --max-depth N
  ro, rw, defaults, nofail, _netdev, noauto, user, users, dev, suid, atime...
                           accepted from /etc/fstab and ignored (always ro)

options:`

// cmdMount mounts; without -f it re-executes itself in the foreground in
// the background and waits for the mount to be ready (daemonize).
func cmdMount(args []string, stderr io.Writer) int {
	fset := newFlagSet("mount", mountSynopsis, stderr)
	var (
		fg, debugFuse, forceShare, strict bool
		format                            string
		opts                              optList
		lf                                logFlags
		limits                            limitFlags
	)
	fset.BoolVar(&fg, "f", false, "stay in the foreground (serve until SIGINT/SIGTERM or unmount)")
	fset.BoolVar(&fg, "foreground", false, "same as -f")
	fset.Var(&opts, "o", "mount `OPTIONS`, comma-separated (repeatable)")
	fset.StringVar(&format, "format", "", "`FORMAT` of IMAGE: qcow2 or raw (default: probe)")
	fset.BoolVar(&debugFuse, "debug-fuse", false, "log every FUSE request and reply (the wire trace)")
	fset.BoolVar(&forceShare, "U", false, "same as --force-share")
	fset.BoolVar(&forceShare, "force-share", false, "ignore QEMU's image locks, as qemu-img -U: mount even while a VM writes to the image (reads may then be torn)")
	fset.BoolVar(&strict, "strict", false, strictUsage)
	limits.register(fset)
	lf.register(fset)
	pos, err := parseArgs(fset, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 2 {
		fmt.Fprintf(stderr, "chainfs mount: want IMAGE and MOUNTPOINT, got %d arguments\n", len(pos))
		fset.Usage()
		return exitUsage
	}
	mo, err := parseMountOpts(opts)
	if err == nil {
		err = lf.check()
	}
	if err == nil {
		// -o confine=DIR and -o max_depth=N (for /etc/fstab) give way to
		// the flags.
		if limits.confine == "" {
			limits.confine = mo.confine
		}
		if limits.maxDepth == layers.DefaultMaxDepth && mo.maxDepth != 0 {
			limits.maxDepth = mo.maxDepth
		}
		err = limits.check()
	}
	var fmtv layers.Format
	if err == nil && format != "" {
		fmtv, err = layers.ParseFormat(format)
	}
	if err != nil {
		fmt.Fprintf(stderr, "chainfs mount: %v\n", err)
		return exitUsage
	}
	mo.fs.Debug = mo.fs.Debug || debugFuse
	mo.forceShare = mo.forceShare || forceShare
	mo.strict = mo.strict || strict

	ready, err := readyPipe()
	if err != nil {
		fmt.Fprintf(stderr, "chainfs mount: %v\n", err)
		return exitUsage
	}
	if !fg && ready == nil {
		return daemonize(args, stderr)
	}
	s := &server{image: pos[0], mountpoint: pos[1], format: fmtv, opts: mo, limits: limits, ready: ready, stderr: stderr}
	return s.run(&lf)
}

// server is one mount being served by this process.
type server struct {
	image, mountpoint string
	format            layers.Format
	opts              *mountOpts
	limits            limitFlags
	// ready is the readiness pipe of a background server (nil in the
	// foreground): one readyByte once mounted, or the error text.
	ready  *os.File
	stderr io.Writer
	log    *logrus.Logger
	// logToStderr says whether the log already shows errors on stderr.
	logToStderr bool
}

// fail reports err, which ends the process with code, where the user sees
// it: through the readiness pipe in the background, on stderr in the
// foreground (unless the log already put it there), and in the log.
func (s *server) fail(code int, err error) int {
	if s.log != nil {
		s.log.WithError(err).Error("mount failed")
	}
	switch {
	case s.ready != nil:
		s.ready.WriteString(err.Error())
		s.ready.Close()
	case !s.logToStderr:
		fmt.Fprintf(s.stderr, "chainfs: %v\n", err)
	}
	return code
}

func (s *server) run(lf *logFlags) int {
	background := s.ready != nil
	log, logFile, note, err := lf.logger(background, s.stderr)
	if err != nil {
		return s.fail(exitUsage, err)
	}
	if logFile != nil {
		defer logFile.Close()
	}
	s.log, s.logToStderr = log, !background && lf.file == ""
	if note != "" {
		fmt.Fprintf(s.stderr, "chainfs: warning: %s\n", note)
	}
	for _, n := range s.opts.notes {
		log.Debugf("mount option %s", n)
	}

	// Catch signals from the start: one that comes while mounting is
	// acted on once the mount exists.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	// A closed stderr pipe (chainfs mount -f 2>&1 | head) must not kill
	// the server and leave a dead mount: writes fail with EPIPE instead.
	signal.Ignore(syscall.SIGPIPE)

	cache := layers.NewCacheSizes(layers.DefaultCacheSizes)
	logCacheStatsOnSignal(log, cache)
	chain, err := layers.Open(s.image, &layers.Options{Format: s.format, Log: slogrus.New(log), ForceShare: s.opts.forceShare,
		Confine: s.limits.confine, MaxDepth: s.limits.maxDepth, Strict: s.opts.strict, Cache: cache})
	if err != nil {
		return s.fail(exitImage, err)
	}
	defer chain.Close()
	logChain(log, chain)
	mnt, err := filepath.Abs(s.mountpoint)
	if err == nil {
		err = checkMountpoint(mnt)
	}
	if err != nil {
		return s.fail(exitMountpoint, err)
	}
	opts := s.opts.fs
	opts.Log = log
	if opts.FsName == "" {
		opts.FsName = s.image
	}
	limitMemory(log)
	srv, err := chainfs.Mount(mnt, chain, &opts)
	if err != nil {
		return s.fail(exitMount, err)
	}
	log.WithFields(logrus.Fields{"image": s.image, "layers": len(chain.Layers), "mountpoint": mnt, "version": versionString()}).Info("mounted")

	go s.handleSignals(sigs, srv, mnt, background)
	if background {
		// Keep no directory busy, and let go of the terminal: the parent
		// returns once the pipe says ready, and whoever captured its
		// output (a shell's $(...), mount(8)) must see EOF.
		os.Chdir("/")
		if err := detachStdio(logFile); err != nil {
			log.WithError(err).Warn("detaching from the terminal")
		}
		s.ready.Write([]byte{readyByte})
		s.ready.Close()
	}
	srv.Wait()
	logDamage(log, chain)
	logCacheStats(log, cache)
	log.WithField("mountpoint", mnt).Info("unmounted")
	return exitOK
}

// logDamage sums up, per layer, the damage QEMU reads through that the
// mount met: each structure was logged as it was first read, but only so
// many per image.
func logDamage(log logrus.FieldLogger, chain *layers.Chain) {
	for _, l := range chain.Layers {
		d := l.Damage()
		if d.Total() == 0 {
			continue
		}
		f := logrus.Fields{"layer": l.Index, "path": l.Path}
		for k, n := range damageByKey(d) {
			f[k] = n
		}
		log.WithFields(f).Warn("damage the layer's reads met (QEMU reads through it; qemu-img check reports it)")
	}
}

// handleSignals unmounts on SIGINT and SIGTERM (and SIGHUP in the
// foreground, when the terminal goes away). Unmounting ends srv.Wait, so
// the process exits once the kernel lets go.
func (s *server) handleSignals(sigs <-chan os.Signal, srv *fuse.Server, mnt string, background bool) {
	unmounting := false
	for sig := range sigs {
		if sig == syscall.SIGHUP && background {
			continue
		}
		if unmounting {
			s.log.WithField("signal", sig).Info("still unmounting")
			continue
		}
		unmounting = true
		s.log.WithField("signal", sig).Info("unmounting")
		if err := srv.Unmount(); err != nil {
			s.log.WithError(err).Warn("unmount failed (busy?); unmounting lazily: the mount goes once the last file on it is closed")
			if err := lazyUnmount(mnt); err != nil {
				s.log.WithError(err).Error("lazy unmount failed")
				unmounting = false
			}
		}
	}
}

// checkMountpoint says why mnt cannot be mounted on, before fusermount3
// says it less clearly.
func checkMountpoint(mnt string) error {
	st, err := os.Stat(mnt)
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mount point %s: not a directory", mnt)
	}
	return nil
}

// lazyUnmount detaches mnt now and lets the kernel finish the unmount when
// it is no longer busy: fusermount3 -u -z, or umount2(MNT_DETACH) if that
// fails.
func lazyUnmount(mnt string) error {
	out, err := fusermount("-u", "-z", mnt)
	if err == nil {
		return nil
	}
	if err2 := syscall.Unmount(mnt, syscall.MNT_DETACH); err2 != nil {
		return fmt.Errorf("fusermount3 -u -z %s: %v: %s; umount2(MNT_DETACH): %v", mnt, err, strings.TrimSpace(out), err2)
	}
	return nil
}

var errNoReadyFD = errors.New("bad " + readyEnv)

// logChain logs the chain as opened, one line per layer: names inside
// images are chosen by whoever wrote them, so the log keeps what each
// image recorded next to the file it led to.
func logChain(log logrus.FieldLogger, chain *layers.Chain) {
	for _, l := range chain.Layers {
		f := logrus.Fields{"layer": l.Index, "path": l.Path, "format": l.Format.String()}
		if real, err := filepath.EvalSymlinks(l.Path); err == nil && real != l.Path {
			if abs, err := filepath.Abs(l.Path); err != nil || abs != real {
				f["real_path"] = real
			}
		}
		if l.BackingFile != "" {
			f["backing_file"] = l.BackingFile
			if l.Backing != nil {
				f["backing_path"] = l.Backing.Path
			}
			switch {
			case l.BackingFormat != "":
				f["backing_format"] = l.BackingFormat
			case l.Backing != nil:
				f["backing_format"] = l.Backing.Format.String() + " (probed)"
			}
		}
		if l.DataFile != nil {
			f["data_file"] = l.Header.DataFile
			f["data_path"] = l.DataFile.Name
		}
		log.WithFields(f).Info("chain layer")
	}
}

// serverMemoryLimit is the Go heap the server aims to stay under. Under
// load go-fuse holds a max_read-sized buffer per request in flight and
// returns them to a pool; left to GOGC alone the heap then grows to several
// times what is live (a soak with 8 readers peaked at 266 MiB). A soft
// limit makes the collector work harder instead; it is not a hard cap, and
// GOMEMLIMIT in the environment overrides it.
//
// What may be live, at most: the chain's caches (layers.DefaultCacheSizes:
// 16 MiB of L2 tables, 4 MiB of inflated clusters kept, 4 MiB of
// read-ahead; layers.DefaultResolvedBytes: 8 MiB of resolved views), the
// mount's rendered map text (fs.RenderedBytes: 2 MiB), and go-fuse's
// request buffers (1 MiB for each reader waiting on the kernel and each
// large read in flight: 6-10 MiB under deep queues), so 44 MiB in all,
// rarely all at once. 48 MiB leaves
// the collector room to run now and then rather than all the time, and
// with the binary's own pages (about 8 MiB) keeps the daemon's RSS under
// the 64 MiB that issue 10's benchmarks hold it to.
const serverMemoryLimit = 48 << 20

func limitMemory(log logrus.FieldLogger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(serverMemoryLimit)
	log.WithField("bytes", serverMemoryLimit).Debug("soft memory limit set")
}
