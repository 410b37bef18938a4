package fs

import (
	"runtime"
	"sync"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Scheduling go-fuse's requests.
//
// go-fuse reads requests from /dev/fuse in goroutines that block in
// read(2), and keeps up to GOMAXPROCS of them (2 to 16, counted when the
// server is made) waiting there; each handles the request it read and
// starts another reader when none is left waiting. A goroutine blocked
// in a system call keeps its P (the runtime's right to run Go code) until
// the runtime's monitor takes it back, 20 µs to 10 ms later. With as many
// Ps as CPUs, the readers waiting on the kernel hold them all: a request
// that arrives wakes a reader, whose new reader and whose reply wait for
// a P. Under deep O_DIRECT queues (fio --iodepth=32) that showed as 2.9
// context switches and 56 µs of daemon CPU per 4 KiB read, against 1.15
// and 28 µs with more Ps than readers can hold (issue 10: 2 CPUs, fio and
// the server at real-time priority so that other load does not blur it;
// IOPS +40% at 4 KiB, +50% at 64 KiB). Those queues still reached the
// daemon one read at a time (no FUSE_ASYNC_DIO then, mount.go). Measured
// again with them reaching it 2 to 4 at once, the raise does no harm and
// helps a little on the medians: the bench ceiling, 3 rounds of 4 s, as
// here against GOMAXPROCS 2, 4 KiB at iodepth 32 92k IOPS against 86k
// (74-95k, 84-86k), 4 psync jobs 65k against 60k (65-69k, 50-67k).
//
// So the server is made with few readers (DefaultReaders) and then runs
// with GOMAXPROCS raised to the CPUs plus the readers plus one: room for
// the readers in read(2), and a P for every CPU besides. CPU-bound work
// (inflating clusters) is shared out by the CPU count (layers), not by
// GOMAXPROCS, so it does not oversubscribe the CPUs.

// DefaultReaders is how many goroutines wait on the kernel for requests
// when Options.Readers is zero: go-fuse's least. More start whenever all
// are busy.
const DefaultReaders = 2

// procsMu serializes the GOMAXPROCS changes of mounts made at once.
var procsMu sync.Mutex

// MountWithReaders is gofs.Mount with go-fuse's pool of waiting readers
// sized to readers (0: DefaultReaders), leaving GOMAXPROCS at least the
// CPUs (GOMAXPROCS as it was) plus readers plus one. It changes GOMAXPROCS
// for the whole process, which is what serving FUSE requests needs; the
// chainfs command serves one mount per process.
func MountWithReaders(mountpoint string, root gofs.InodeEmbedder, opts *gofs.Options, readers int) (*fuse.Server, error) {
	if readers <= 0 {
		readers = DefaultReaders
	}
	procsMu.Lock()
	defer procsMu.Unlock()
	cpus := runtime.GOMAXPROCS(readers)
	srv, err := gofs.Mount(mountpoint, root, opts)
	runtime.GOMAXPROCS(cpus + readers + 1)
	return srv, err
}
