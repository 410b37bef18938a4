package layers

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Decompression follows QEMU's block/qcow2-threads.c: a cluster is good
// only when its stream inflates to exactly one cluster. Output is capped at
// one cluster whatever the stream says, and trailing input is ignored, as
// compressed streams are padded to 512-byte sectors.

var flatePool sync.Pool // of io.ReadCloser (flate.Resetter)

func inflateZlib(dst, src []byte) error {
	var r io.ReadCloser
	if v := flatePool.Get(); v != nil {
		r = v.(io.ReadCloser)
		r.(flate.Resetter).Reset(bytes.NewReader(src), nil)
	} else {
		r = flate.NewReader(bytes.NewReader(src))
	}
	defer flatePool.Put(r)
	_, err := io.ReadFull(r, dst)
	return err
}

var zstdPool sync.Pool // of *zstd.Decoder

func inflateZstd(dst, src []byte) error {
	var d *zstd.Decoder
	if v := zstdPool.Get(); v != nil {
		d = v.(*zstd.Decoder)
		if err := d.Reset(bytes.NewReader(src)); err != nil {
			return err
		}
	} else {
		var err error
		d, err = zstd.NewReader(bytes.NewReader(src),
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(4<<20),
			zstd.WithDecoderMaxWindow(4<<20))
		if err != nil {
			return err
		}
	}
	defer func() {
		d.Reset(nil)
		zstdPool.Put(d)
	}()
	_, err := io.ReadFull(d, dst)
	return err
}

// readCompressed reads and inflates the compressed cluster described by
// ext into dst (one cluster long).
func (q *qcow2) readCompressed(dst []byte, ext *Extent) error {
	if c := q.zcache.get(ext.HostOffset, dst); c {
		return nil
	}
	src := make([]byte, ext.CompressedSize)
	if _, err := q.file.ReadAt(src, ext.HostOffset); err != nil {
		return &FormatError{File: q.name, Msg: fmt.Sprintf("read compressed cluster at %#x", ext.HostOffset), Err: err}
	}
	var err error
	if q.hdr.CompressionType == CompressionZstd {
		err = inflateZstd(dst, src)
	} else {
		err = inflateZlib(dst, src)
	}
	if err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			err = fmt.Errorf("stream ends before one cluster (%d bytes)", len(dst))
		}
		return corrupt(q.name, "compressed cluster at %#x (%d bytes) for guest offset %#x does not inflate to one cluster: %v",
			ext.HostOffset, ext.CompressedSize, ext.Offset&^(q.csize-1), err)
	}
	q.zcache.put(ext.HostOffset, dst)
	return nil
}

// clusterCache keeps a few recently inflated clusters so that the kernel's
// 128 KiB reads of a 2 MiB compressed cluster do not inflate it 16 times.
type clusterCache struct {
	mu    sync.Mutex
	size  int64
	slots [4]struct {
		off  int64
		data []byte
	}
	next int
}

func newClusterCache(size int64) *clusterCache {
	c := &clusterCache{size: size}
	for i := range c.slots {
		c.slots[i].off = -1
	}
	return c
}

func (c *clusterCache) get(off int64, dst []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.slots {
		if c.slots[i].off == off {
			copy(dst, c.slots[i].data)
			return true
		}
	}
	return false
}

func (c *clusterCache) put(off int64, src []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.slots[c.next]
	c.next = (c.next + 1) % len(c.slots)
	if s.data == nil {
		s.data = make([]byte, c.size)
	}
	copy(s.data, src)
	s.off = off
}
