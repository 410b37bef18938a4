package layers

// scratch holds the status extents of one layer at a time.
type scratch struct{ exts []Extent }

// appendOwn appends what l decides in [ws, we) (clipped to its size):
// its status where it holds something, where it holds nothing and has no
// backing file, and where it holds nothing past its backing file's end.
// Data of a metadata-preallocated image is split where the host file has
// holes, as block status reports it.
func appendOwn(dst []Run, l *Layer, ws, we int64, sc *scratch) ([]Run, error) {
	end := min(we, l.Size)
	if ws >= end {
		return dst, nil
	}
	exts, err := l.Status(sc.exts[:0], ws, end-ws)
	sc.exts = exts[:0]
	if err != nil {
		return dst, err
	}
	return appendDecided(dst, l, exts, true), nil
}

// appendDecided appends the extents of l that it decides (see appendOwn);
// holes says whether to split preallocated data at host holes.
func appendDecided(dst []Run, l *Layer, exts []Extent, holes bool) []Run {
	b := l.Backing
	for _, e := range exts {
		switch {
		case e.Kind == Unallocated && b != nil:
			if e.End() <= b.Size {
				continue
			}
			if cut := b.Size - e.Offset; cut > 0 {
				e.Offset, e.Length = b.Size, e.Length-cut
				if e.File != nil {
					e.HostOffset += cut
				}
			}
			dst = append(dst, Run{Extent: e, Layer: l})
		case e.Kind == Data && holes && l.q != nil:
			dst = appendData(dst, l, e)
		default:
			dst = append(dst, Run{Extent: e, Layer: l})
		}
	}
	return dst
}

// holeChecksFirst is how many data extents of an image are checked for
// host holes before QEMU's preallocation guess is made for it.
const holeChecksFirst = 32

// appendData appends a data extent of l, split at host holes when QEMU
// would report them (a metadata-preallocated image). The guess reads the
// image's refcounts (qcow2_detect_metadata_preallocation), which a deep
// chain would pay for every layer on its first map; yet it only matters
// where a data cluster lies over a hole of the host file, which is rare
// outside preallocated images. So the file is asked first, for an image's
// first holeChecksFirst extents; the guess is made on the first hole, or
// once that many extents have been asked about.
func appendData(dst []Run, l *Layer, e Extent) []Run {
	q := l.q
	if q.holeChecks.Add(1) <= holeChecksFirst {
		data, n, err := e.File.Allocation(e.HostOffset, e.Length)
		if err != nil || n <= 0 || (data && n >= e.Length) {
			return append(dst, Run{Extent: e, Layer: l}) // no hole: the same whatever the guess
		}
	}
	if prealloc, _ := q.metadataPreallocated(); !prealloc { // QEMU treats a failed guess as "no"
		return append(dst, Run{Extent: e, Layer: l})
	}
	return appendHostHoles(dst, l, e)
}

// appendHostHoles splits a data extent of a metadata-preallocated image
// where its host file has holes (qcow2_co_block_status passes the file's
// status through for such images).
func appendHostHoles(dst []Run, l *Layer, e Extent) []Run {
	for done := int64(0); done < e.Length; {
		data, n, err := e.File.Allocation(e.HostOffset+done, e.Length-done)
		if err != nil || n <= 0 {
			n, data = e.Length-done, true // errors only cost the extra information
		}
		dst = append(dst, Run{
			Extent:   Extent{Offset: e.Offset + done, Length: n, Kind: Data, File: e.File, HostOffset: e.HostOffset + done},
			Layer:    l,
			HostHole: !data,
		})
		done += n
	}
	return dst
}

// direct appends the runs of [off, end) by walking the chain from l as far
// as each range needs, using the cached answers of the layers below where
// there are some. It is what a window that cannot be resolved whole, and a
// first read of a window, take; its errors are exactly those of the
// tables the range needs.
func (l *Layer) direct(dst []Run, off, end int64, holes bool) ([]Run, error) {
	var sc []scratch
	return l.walk(dst, off, end, holes, &sc, 0)
}

func (l *Layer) walk(dst []Run, off, end int64, holes bool, sc *[]scratch, depth int) ([]Run, error) {
	if depth > 0 && l.res != nil {
		// A layer below with a cached answer needs no walk.
		if v, ok := l.res.cache.Get(resKey{l, off >> l.res.windowBits}); ok {
			if f := v.(*flat); !f.direct && (end-1)>>l.res.windowBits == off>>l.res.windowBits {
				for i := searchRuns(f.runs, off); i < len(f.runs) && f.runs[i].Offset < end; i++ {
					dst = append(dst, clip(f.runs[i], off, end))
				}
				return dst, nil
			}
		}
	}
	if depth >= len(*sc) {
		*sc = append(*sc, scratch{})
	}
	exts, err := l.Status((*sc)[depth].exts[:0], off, end-off)
	(*sc)[depth].exts = exts[:0]
	if err != nil {
		return dst, err
	}
	b := l.Backing
	for i := range exts {
		e := exts[i]
		if e.Kind == Unallocated && b != nil && e.Offset < b.Size {
			split := min(b.Size, e.End())
			if dst, err = b.walk(dst, e.Offset, split, holes, sc, depth+1); err != nil {
				return dst, err
			}
			if split == e.End() {
				continue
			}
		}
		dst = appendDecided(dst, l, exts[i:i+1], holes)
	}
	return dst, nil
}
