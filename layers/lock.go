package layers

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// QEMU's image locking (block/file-posix.c, raw_apply_lock_bytes and
// raw_check_lock_bytes). Every process that opens an image takes shared OFD
// locks on single bytes of it: byte 100+i while it holds permission i, and
// byte 200+i while it refuses to share permission i with others. Before
// using a permission it checks that nobody locks 200+i; before refusing one
// it checks that nobody locks 100+i. The locks belong to the open file
// description, so they live exactly as long as the HostFile stays open.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

// Permission bits, in QEMU's order (BLK_PERM_*).
const (
	permConsistentRead = iota
	permWrite
	permWriteUnchanged
	permResize
	permCount
)

var permNames = [permCount]string{"consistent read", "write", "write unchanged", "resize"}

// ErrLocked: another process holds an image in a way a reader cannot share
// (a running VM, qemu-io, qemu-img commit...).
var ErrLocked = errors.New("image is locked by another process")

// lockReadOnly takes part in QEMU's protocol as a read-only qemu-img does:
// it holds "consistent read" and, unless forceShare (qemu-img -U), refuses
// to share "write" and "resize", so a VM cannot open the file for writing
// while chainfs reads it. With forceShare it shares everything.
func (h *HostFile) lockReadOnly(forceShare bool) error {
	if h.fd < 0 {
		return nil
	}
	held := []int{permConsistentRead}
	var unshared []int
	if !forceShare {
		unshared = []int{permWrite, permResize}
	}
	for _, p := range held {
		if err := h.ofdLock(lockPermBase + p); err != nil {
			return h.lockFailed(err)
		}
	}
	for _, p := range unshared {
		if err := h.ofdLock(lockSharedBase + p); err != nil {
			return h.lockFailed(err)
		}
	}
	// Someone refusing to share what we hold?
	for _, p := range held {
		if busy, err := h.ofdLocked(lockSharedBase + p); err != nil {
			return h.lockFailed(err)
		} else if busy {
			return &FormatError{File: h.Name, Msg: fmt.Sprintf("Failed to get %q lock: is another process using the image?", permNames[p]), Err: ErrLocked}
		}
	}
	// Someone holding what we refuse to share?
	for _, p := range unshared {
		if busy, err := h.ofdLocked(lockPermBase + p); err != nil {
			return h.lockFailed(err)
		} else if busy {
			return &FormatError{File: h.Name, Msg: fmt.Sprintf("Failed to get shared %q lock: is another process using the image?", permNames[p]), Err: ErrLocked}
		}
	}
	return nil
}

// lockFailed reports a lock call that failed for a reason other than a
// conflict. File systems without OFD locks (some network file systems)
// answer EINVAL or ENOLCK; QEMU then warns and goes on unlocked
// (locking=auto), and so do we, leaving the decision to the caller's log.
func (h *HostFile) lockFailed(err error) error {
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return &FormatError{File: h.Name, Msg: "take QEMU image lock", Err: err}
}

func (h *HostFile) ofdLock(b int) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: int64(b), Len: 1}
	err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		// A write lock on the byte: QEMU never takes one, but someone did.
		return &FormatError{File: h.Name, Msg: fmt.Sprintf("lock byte %d is held exclusively: is another process using the image?", b), Err: ErrLocked}
	}
	return err
}

// ofdLocked reports whether another open file description holds a lock on
// byte b (F_OFD_GETLK asking for an exclusive lock, as QEMU tests).
func (h *HostFile) ofdLocked(b int) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(b), Len: 1}
	if err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}
