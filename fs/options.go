// Package fs presents an opened backing chain as a read-only FUSE
// filesystem. For every layer N of the chain (0 is the opened image) the
// root directory holds, in chain order:
//
//   - N-name.raw: the bytes a guest booted from that layer sees (the layer
//     with its own backing chain), with holes where the layer's map says
//     "data": false (SEEK_DATA/SEEK_HOLE) and st_blocks counting the bytes
//     it says "data": true;
//   - N-name.map.json: what `qemu-img map --output=json` prints for it;
//   - N-name.depth: what `nbdinfo --map=qemu:allocation-depth` prints for
//     it served by `qemu-nbd -A`;
//   - N-name@SNAP.raw, .map.json and .depth: the same three for each
//     internal snapshot SNAP of the layer (the disk as the snapshot
//     recorded it, read with the layer's backing chain);
//   - N-name.B.bitmap: what `nbdinfo --map=qemu:dirty-bitmap:B` prints
//     for each persistent dirty bitmap B of the layer served by
//     `qemu-nbd -B B`.
//
// name is the base name of the layer's image file; SNAP and B are escaped
// as names.go says. The tree is fixed at
// mount time, and the images cannot change under the mount, so the kernel
// is told to cache names, attributes and data for long.
//
// This is the only package that imports go-fuse: the chain comes in as a
// *layers.Chain and the settings as an Options struct built by the caller,
// which knows the command line.
package fs

import (
	"time"

	"github.com/sirupsen/logrus"
)

// Defaults for the zero fields of Options.
const (
	// DefaultCacheTimeout is how long the kernel keeps names and
	// attributes. Nothing under the mount ever changes, so it is long.
	DefaultCacheTimeout = time.Hour
	// DefaultMaxRead is the largest read request asked of the kernel
	// (max_read, go-fuse's MaxWrite); the kernel caps it at
	// /proc/sys/fs/fuse/max_pages_limit pages.
	DefaultMaxRead = 1 << 20
	// DefaultMaxBackground is how many asynchronous requests (readahead,
	// async direct I/O) the kernel keeps in flight; go-fuse's 12 starves
	// parallel readers.
	DefaultMaxBackground = 64
)

// Options configure a mount. The zero value mounts with the defaults,
// visible to the mounting user only.
type Options struct {
	// Log receives every error a FUSE request returns, with its context,
	// and the FUSE wire trace when Debug is set. Nil means logrus's
	// standard logger.
	Log logrus.FieldLogger
	// Debug logs every FUSE request and reply (go-fuse's wire trace) at
	// info level.
	Debug bool
	// AllowOther lets other users than the mounting one use the mount
	// (FUSE's allow_other). The caller decides whether it implies
	// DefaultPermissions; the chainfs command makes it so.
	AllowOther bool
	// DefaultPermissions makes the kernel check file modes and owners
	// (FUSE's default_permissions).
	DefaultPermissions bool
	// FsName is the source shown in /proc/mounts and df; empty means the
	// path of the opened image.
	FsName string
	// ExtraOptions are further mount options handed to fusermount3
	// unchanged ("noexec", "allow_root", ...). The mount is always
	// read-only ("ro"), nosuid and nodev.
	ExtraOptions []string
	// CacheTimeout is how long the kernel caches names and attributes;
	// zero means DefaultCacheTimeout.
	CacheTimeout time.Duration
	// MaxRead is the largest read request; zero means DefaultMaxRead.
	MaxRead int
	// Readers is how many goroutines wait on the kernel for requests
	// (sched.go); zero means DefaultReaders.
	Readers int
}

func (o *Options) log() logrus.FieldLogger {
	if o.Log == nil {
		return logrus.StandardLogger()
	}
	return o.Log
}

func (o *Options) cacheTimeout() time.Duration {
	if o.CacheTimeout <= 0 {
		return DefaultCacheTimeout
	}
	return o.CacheTimeout
}

func (o *Options) maxRead() int {
	if o.MaxRead <= 0 {
		return DefaultMaxRead
	}
	return o.MaxRead
}
