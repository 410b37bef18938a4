package layers

// rawImage is a raw image file. QEMU's virtual size for it is the file
// length rounded up to 512 bytes (refresh_total_sectors), the tail reading
// zero.
type rawImage struct {
	file *HostFile
	size int64
}

func openRaw(f *HostFile) *rawImage {
	return &rawImage{file: f, size: (f.Size() + 511) &^ 511}
}

// status reports data and holes of the file, as QEMU's raw format driver
// passes block status through to file-posix (raw_co_block_status): data is
// Data at the same host offset, a hole is Zero with a host offset. Without
// O_DIRECT the file's request alignment is one byte, so the zero tail that
// rounds the virtual size up to 512 is a hole of its own.
func (r *rawImage) status(dst []Extent, off, length int64) ([]Extent, error) {
	end := min(off+length, r.size)
	for off < end {
		data, n, err := r.file.Allocation(off, end-off)
		if err != nil {
			return dst, err
		}
		if n <= 0 {
			n = end - off
		}
		k := Zero
		if data {
			k = Data
		}
		dst = appendExtent(dst, Extent{Offset: off, Length: n, Kind: k, File: r.file, HostOffset: off})
		off += n
	}
	return dst, nil
}
