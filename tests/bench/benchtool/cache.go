package main

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmdDrop asks the kernel to drop each file's clean pages (if drop), then
// prints "FILE RESIDENT_PAGES TOTAL_PAGES" as mincore reports them; a
// file that cannot be mapped (FUSE direct_io) prints -1.
func cmdDrop(args []string, drop bool) error {
	for _, p := range args {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		if drop {
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				f.Close()
				return fmt.Errorf("fadvise %s: %w", p, err)
			}
		}
		res, total := resident(f)
		f.Close()
		fmt.Printf("%s %d %d\n", p, res, total)
	}
	return nil
}

// resident counts the file's pages in the page cache with mincore. Files
// over 64 GiB are looked at only in the extents SEEK_DATA reports, so a
// sparse multi-TiB view is quick (cp and friends never read its holes);
// smaller ones whole, holes included, since dd caches those too.
func resident(f *os.File) (res, total int64) {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, 0
	}
	size := st.Size()
	page := int64(os.Getpagesize())
	total = (size + page - 1) / page
	fd := int(f.Fd())
	if size <= 64<<30 {
		n, ok := residentRange(fd, 0, size)
		if !ok {
			return -1, total
		}
		return n, total
	}
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil { // no SEEK_DATA: all data
			start = off
		}
		end := size
		if err == nil {
			if e, err := unix.Seek(fd, start, unix.SEEK_HOLE); err == nil {
				end = e
			}
		}
		n, ok := residentRange(fd, start/page*page, end)
		if !ok {
			return -1, total
		}
		res += n
		off = end
	}
	return res, total
}

// residentRange counts resident pages in [from, to), from page-aligned,
// mapping 1 GiB at a time.
func residentRange(fd int, from, to int64) (int64, bool) {
	page := int64(os.Getpagesize())
	const piece = 1 << 30
	vec := make([]byte, piece/page)
	var res int64
	for off := from; off < to; off += piece {
		n := int64(piece)
		if to-off < n {
			n = to - off
		}
		m, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return 0, false
		}
		np := (n + page - 1) / page
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			unix.Munmap(m)
			return 0, false
		}
		for _, b := range vec[:np] {
			res += int64(b & 1)
		}
		unix.Munmap(m)
	}
	return res, true
}
