// Package status computes, for one layer of a QEMU backing chain, the two
// answers QEMU gives about where its bytes come from:
//
//   - the map: what `qemu-img map --output=json` prints for the layer
//     (Map, WriteMapJSON), following block/io.c's block-status rules;
//   - the allocation depth: what `nbdinfo --map=qemu:allocation-depth`
//     prints against `qemu-nbd -A` serving the layer (Depth, WriteDepth).
//
// Both are computed from the layer's resolved runs (layers.Layer.Runs),
// which the layers of a chain share: mapping every layer of a deep chain
// costs about as much as mapping its top. Both stream, in memory bounded
// by the chain's caches whatever the image size.
package status

// Entry is one line of `qemu-img map --output=json`.
type Entry struct {
	Start, Length int64
	// Depth is how many backing layers down the search stopped (0: this
	// layer).
	Depth int
	// Present is false for ranges allocated nowhere in the chain.
	Present, Zero, Data, Compressed bool
	// HasOffset says whether Offset (a host offset in File) is reported.
	HasOffset bool
	Offset    int64
	File      string
}

// End returns Start+Length.
func (e Entry) End() int64 { return e.Start + e.Length }

// DepthExtent is one line of `nbdinfo --map=qemu:allocation-depth`:
// Depth 0 is absent, 1 local, n backing depth n.
type DepthExtent struct {
	Offset, Length int64
	Depth          int
}
