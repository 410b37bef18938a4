// Package layers opens a QEMU disk-image backing chain (qcow2 and raw) and
// reads every layer of it exactly as QEMU's block layer does, in pure Go.
//
// A Chain is opened with Open. Each Layer reads with its own backing chain
// below it (Layer.ReadAt: the bytes a guest booted from that layer sees) and
// answers a backing-free status query (Layer.Status: what this layer alone
// holds for a range, with the distinctions QEMU's qcow2 driver makes).
//
// Every image is treated as untrusted: files are opened read-only, every
// header count and offset is checked against QEMU's limits and the real file
// size before it sizes an allocation or a read, and malformed structures are
// reported as *FormatError values that name the file and the offset.
//
// Layers and chains are safe for concurrent use by multiple goroutines.
package layers

import (
	"errors"
	"fmt"
)

// Format is an image format.
type Format uint8

const (
	FormatUnknown Format = iota
	FormatRaw
	FormatQcow2
)

func (f Format) String() string {
	switch f {
	case FormatRaw:
		return "raw"
	case FormatQcow2:
		return "qcow2"
	}
	return "unknown"
}

// ParseFormat maps a QEMU format name ("raw", "qcow2") to a Format.
func ParseFormat(name string) (Format, error) {
	switch name {
	case "raw":
		return FormatRaw, nil
	case "qcow2":
		return FormatQcow2, nil
	}
	return FormatUnknown, fmt.Errorf("format %q: %w", name, ErrUnsupported)
}

// Kind says what one layer alone holds for a guest range. It mirrors the
// subcluster types of QEMU's qcow2 driver (block/qcow2.h,
// QCow2SubclusterType); raw layers use Data and Zero.
type Kind uint8

const (
	// Unallocated: the layer holds nothing; reads defer to the backing
	// file (or read zero without one). Extent.File is set when QEMU still
	// reports a host offset: an unallocated subcluster of an allocated
	// cluster (QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC).
	Unallocated Kind = iota
	// Data: guest data stored at Extent.HostOffset in Extent.File.
	Data
	// Compressed: one compressed cluster; Extent.HostOffset and
	// Extent.CompressedSize locate the compressed stream.
	Compressed
	// Zero: reads as zeroes and overrides the backing file. Extent.File is
	// set when host space is allocated (QCOW2_SUBCLUSTER_ZERO_ALLOC, or a
	// hole of a raw file); nil for a plain zero cluster.
	Zero
)

func (k Kind) String() string {
	switch k {
	case Unallocated:
		return "unallocated"
	case Data:
		return "data"
	case Compressed:
		return "compressed"
	case Zero:
		return "zero"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Extent is a run of guest bytes [Offset, Offset+Length) of one layer that
// share a Kind and, where File is set, map to the host-contiguous range
// starting at HostOffset in File.
type Extent struct {
	Offset, Length int64
	Kind           Kind
	// File is the host file holding HostOffset, or nil where QEMU reports
	// no host offset.
	File       *HostFile
	HostOffset int64
	// CompressedSize is the length of the compressed stream at HostOffset
	// (Kind Compressed only); it may reach past the end of File.
	CompressedSize int64
}

// End returns Offset+Length.
func (e Extent) End() int64 { return e.Offset + e.Length }

// HasHostOffset reports whether QEMU's block status gives a host offset
// for this extent (BDRV_BLOCK_OFFSET_VALID): compressed clusters never do.
func (e Extent) HasHostOffset() bool { return e.File != nil && e.Kind != Compressed }

// Errors that callers can test for with errors.Is.
var (
	// ErrUnsupported: a valid image that uses something chainfs does not
	// read (a format other than qcow2/raw, an unknown incompatible feature,
	// a protocol backing name).
	ErrUnsupported = errors.New("unsupported")
	// ErrEncrypted: an AES- or LUKS-encrypted qcow2 image.
	ErrEncrypted = errors.New("encrypted images are not supported")
	// ErrCorrupt: a structure violates the qcow2 specification or QEMU's limits.
	ErrCorrupt = errors.New("corrupt image")
	// ErrChain: the backing chain itself is unusable (missing file, loop,
	// too deep).
	ErrChain = errors.New("bad backing chain")
)

// FormatError describes a malformed or unsupported structure of one file.
type FormatError struct {
	File string // the image file, as opened
	Msg  string // what is wrong, naming the structure and its offset
	Err  error  // ErrCorrupt, ErrUnsupported, ErrEncrypted or an I/O error
}

func (e *FormatError) Error() string {
	if e.Err != nil && e.Err != ErrCorrupt && e.Err != ErrUnsupported && e.Err != ErrLocked {
		if e.Msg == "" {
			return e.File + ": " + e.Err.Error()
		}
		return e.File + ": " + e.Msg + ": " + e.Err.Error()
	}
	return e.File + ": " + e.Msg
}

func (e *FormatError) Unwrap() error { return e.Err }

func corrupt(file, format string, args ...any) error {
	return &FormatError{File: file, Msg: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}

func unsupported(file, format string, args ...any) error {
	return &FormatError{File: file, Msg: fmt.Sprintf(format, args...), Err: ErrUnsupported}
}
