package fs

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/chainfs/chainfs/layers"
)

// Mount mounts chain read-only at mountpoint and serves it until the
// returned server is unmounted (Server.Unmount, fusermount3 -u); it returns
// once the kernel has the mount. The chain must stay open until
// Server.Wait returns.
func Mount(mountpoint string, chain *layers.Chain, opts *Options) (*fuse.Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	srv, err := MountWithReaders(mountpoint, NewRoot(chain, opts), GoFuseOptions(chain, opts), opts.Readers)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", chain.Top().Path, mountpoint, err)
	}
	RaiseReadahead(mountpoint, opts.maxRead(), opts.log())
	return srv, nil
}

// RaiseReadahead widens the kernel's readahead window for the mount to
// max_read. At FUSE_INIT the kernel takes the smaller of our max_readahead
// and its 128 KiB default, so a sequential reader would get 128 KiB
// requests however large max_read is; the window can only grow through
// the mount's backing-device entry in sysfs afterwards (what blockdev
// --setra does for disks). That needs root; otherwise it stays at 128 KiB.
func RaiseReadahead(mountpoint string, bytes int, log logrus.FieldLogger) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		log.WithError(err).Debug("readahead: stat of the mountpoint failed; keeping the kernel's window")
		return
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(path, []byte(strconv.Itoa(bytes>>10)), 0); err != nil {
		log.WithError(err).Debug("readahead: cannot widen the kernel's window; keeping 128 KiB")
		return
	}
	log.WithField("read_ahead_kb", bytes>>10).Debug("readahead window widened")
}

// GoFuseOptions turns opts into go-fuse's options for a mount of chain.
func GoFuseOptions(chain *layers.Chain, opts *Options) *gofs.Options {
	logger := opts.log()
	timeout := opts.cacheTimeout()
	fsname := opts.FsName
	if fsname == "" {
		fsname = chain.Top().Path
	}
	// "ro" makes the kernel refuse every write with EROFS before it
	// reaches us; nosuid and nodev are fusermount3's defaults anyway.
	mopts := []string{"ro", "nosuid", "nodev"}
	if opts.DefaultPermissions {
		mopts = append(mopts, "default_permissions")
	}
	mopts = append(mopts, opts.ExtraOptions...)
	wire := log.New(&logWriter{log: logger.WithField("src", "go-fuse"), trace: opts.Debug}, "", 0)
	return &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: opts.AllowOther,
			Options:    mopts,
			FsName:     fsname,
			Name:       "chainfs", // the type is fuse.chainfs
			MaxWrite:   opts.maxRead(),
			// The kernel caps readahead at its own default (128 KiB) but
			// takes a smaller value if given one: ask for the most.
			MaxReadAhead:  opts.maxRead(),
			MaxBackground: DefaultMaxBackground,
			// Not READDIRPLUS: a plain `ls` must not stat every file, since
			// stat renders the maps. `ls -l` looks each name up instead.
			DisableReadDirPlus: true,
			// No xattrs: the kernel stops asking after the first ENOSYS,
			// which saves a round trip per `ls -l` entry.
			DisableXAttrs: true,
			// Replies are byte slices, never file descriptors: go-fuse's
			// splice path would fill a pipe with each reply's header only
			// to fall back to writev (and warn once a 1 MiB reply outgrows
			// the pipe). Measured: about 10% less daemon CPU per 4 KiB read.
			DisableSplice: true,
			// Asynchronous direct I/O (FUSE_ASYNC_DIO, which libfuse asks
			// for by default and go-fuse does not): without it the kernel
			// answers an O_DIRECT read submitted through libaio or
			// io_uring before the submission returns, so a queue of 32
			// reads reaches the daemon one at a time.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			Debug:             opts.Debug,
			Logger:            wire,
			PanicHandler: func(v any) fuse.Status {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				logger.WithField("panic", fmt.Sprint(v)).Errorf("BUG: panic in a FUSE request handler, replying EIO\n%s", buf)
				return fuse.EIO
			},
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          wire,
	}
}

// logWriter sends go-fuse's log lines to logrus: with trace set, the wire
// trace ("rx 12: READ ...", "tx 12: OK ...") at info level, everything else
// go-fuse says as a warning.
type logWriter struct {
	log   logrus.FieldLogger
	trace bool
	mu    sync.Mutex
	part  []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		line := string(w.part[:i])
		w.part = w.part[i+1:]
		if w.trace || teardownNoise(line) {
			w.log.Info(line)
		} else if strings.TrimSpace(line) != "" {
			w.log.Warn(line)
		}
	}
	return len(p), nil
}

// teardownNoise reports a go-fuse line that only says the kernel tore
// the connection down under a request reader: when the last holder of a
// lazily unmounted mount closes, a reader still blocked in read(2) can get
// ECONNABORTED (103) instead of ENODEV, and go-fuse logs it as a failure
// although the server is on its way out either way.
func teardownNoise(line string) bool {
	return strings.HasPrefix(line, "Failed to read from fuse conn: 103=")
}
