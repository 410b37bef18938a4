package layers

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// HostFile is one file of a chain as stored on the host: a qcow2 file, a
// raw image or an external data file. It is opened read-only and is safe
// for concurrent use.
type HostFile struct {
	// Name is the path the file was opened by (as QEMU resolves it).
	Name string
	r    io.ReaderAt
	fd   int // -1 when r is not an *os.File: no SEEK_DATA and no stat
	size int64
	file *os.File
}

// NewHostFile wraps r, of the given size, as a host file named name. Host
// files made this way have no hole information: Allocation reports data.
func NewHostFile(name string, r io.ReaderAt, size int64) *HostFile {
	h := &HostFile{Name: name, r: r, size: size, fd: -1}
	if f, ok := r.(*os.File); ok {
		h.file = f
		h.fd = int(f.Fd())
	}
	return h
}

// openHostFile opens path read-only. Only regular files and block devices
// are accepted: a directory or a FIFO is not an image.
func openHostFile(path string) (*HostFile, error) {
	// Look before opening: opening a FIFO or a tty named by a hostile
	// image must not block or have side effects. O_NONBLOCK covers the
	// race between the two.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() && (st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0) {
		if st.IsDir() {
			return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EISDIR}
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file or block device")}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := st.Size()
	switch {
	case st.Mode().IsRegular():
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, err
		}
		size = end
	case st.IsDir():
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EISDIR}
	default:
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file or block device")}
	}
	return NewHostFile(path, f, size), nil
}

// Size returns the file's length in bytes.
func (h *HostFile) Size() int64 { return h.size }

// File returns the underlying *os.File, or nil.
func (h *HostFile) File() *os.File { return h.file }

// Close closes the underlying file if it was opened by this package.
func (h *HostFile) Close() error {
	if h.file != nil {
		return h.file.Close()
	}
	return nil
}

// maxQEMURead is where QEMU's block layer stops reading: it refuses any
// request that reaches past BDRV_MAX_LENGTH, INT64_MAX rounded down to
// 1 GiB (block/io.c, bdrv_check_request).
const maxQEMURead = math.MaxInt64 &^ (1<<30 - 1)

// errBeyondQEMURead: a read QEMU's block layer refuses (EIO in QEMU); only
// a corrupt structure points there. It wraps ErrCorrupt.
var errBeyondQEMURead error = beyondQEMURead{}

type beyondQEMURead struct{}

func (beyondQEMURead) Error() string {
	return fmt.Sprintf("offset beyond what QEMU's block layer reads (%#x)", int64(maxQEMURead))
}
func (beyondQEMURead) Unwrap() error { return ErrCorrupt }

// ReadAt reads len(p) bytes at off. Bytes past the end of the file read as
// zero, as QEMU's block layer pads reads past EOF (block/io.c,
// bdrv_aligned_preadv); a read reaching past where QEMU reads at all fails
// as it does there. Callers that must not read past EOF check Size.
func (h *HostFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off > maxQEMURead || int64(len(p)) > maxQEMURead-off {
		return 0, errBeyondQEMURead
	}
	want := len(p)
	if off >= h.size {
		clear(p)
		return want, nil
	}
	if rem := h.size - off; int64(len(p)) > rem {
		clear(p[rem:])
		p = p[:rem]
	}
	n, err := h.r.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == io.EOF {
		// The file shrank under us; what is missing reads as zero.
		clear(p[n:])
		err = nil
	}
	if err != nil {
		return n, err
	}
	return want, nil
}

// Allocation reports whether the file holds data at off, and how many bytes
// from off (at most length) share that state. It follows QEMU's file-posix
// driver (find_allocation): SEEK_DATA/SEEK_HOLE, a trailing hole past the
// last data, and "all data" when the file cannot tell. Offsets at or past
// the end of the file are a hole.
func (h *HostFile) Allocation(off, length int64) (data bool, n int64, err error) {
	if length <= 0 {
		return false, 0, nil
	}
	if off >= h.size {
		return false, length, nil
	}
	if h.fd < 0 {
		return true, min(length, h.size-off), nil
	}
	d, err := unix.Seek(h.fd, off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return false, length, nil // trailing hole
	}
	if err != nil {
		return true, length, nil // no information: pretend there are no holes
	}
	if d > off {
		return false, min(d-off, length), nil
	}
	hole, err := unix.Seek(h.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		return true, length, nil
	}
	return true, min(hole-off, length), nil
}

// AllocatedBytes returns the bytes the file occupies on disk (st_blocks).
func (h *HostFile) AllocatedBytes() (int64, error) {
	if h.file == nil {
		return h.size, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(h.fd, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
