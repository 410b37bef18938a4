package layers

import "testing"

// TestStreamAdvance: which reads count as sequential, and which range
// each one gives to read-ahead. Rows are sequences of reads of a 64 MiB
// layer with the range each should start reading ahead (0, 0: none).
func TestStreamAdvance(t *testing.T) {
	const K, M = 1 << 10, 1 << 20
	type read struct{ off, n, from, to int64 }
	rows := []struct {
		name  string
		reads []read
		// empty: the range read ahead for this read (counted from 1)
		// held no compressed cluster
		empty int
	}{
		{"1 MiB reads in order: two requests ahead of the furthest", []read{
			{0, M, M, 3 * M}, {M, M, 3 * M, 4 * M}, {2 * M, M, 4 * M, 5 * M}}, 0},
		{"two requests in flight arrive out of order", []read{
			{0, M, M, 3 * M}, {2 * M, M, 0, 0}, {M, M, 3 * M, 5 * M}, {3 * M, M, 5 * M, 6 * M}}, 0},
		{"small reads: at least 256 KiB ahead", []read{
			{0, 4 * K, 4 * K, 260 * K}, {4 * K, 4 * K, 260 * K, 264 * K}}, 0},
		{"a gap the page cache holds: still the stream", []read{
			{0, 64 * K, 64 * K, 320 * K}, {192 * K, 64 * K, 320 * K, 512 * K}}, 0},
		{"a jump further than a gap: not sequential", []read{
			{0, 64 * K, 64 * K, 320 * K}, {10 * M, 64 * K, 0, 0}}, 0},
		{"one read in the middle is no stream yet; the next one is", []read{
			{8 * M, 64 * K, 0, 0}, {8*M + 64*K, 64 * K, 8*M + 128*K, 8*M + 384*K}}, 0},
		{"a jump back, then on from there: read ahead from there", []read{
			{8 * M, 64 * K, 0, 0}, {8*M + 64*K, 64 * K, 8*M + 128*K, 8*M + 384*K},
			{M, 64 * K, 0, 0}, {M + 64*K, 64 * K, M + 128*K, M + 384*K}}, 0},
		{"a range ahead with nothing to inflate: none for 16 MiB after it, then again", []read{
			{0, 64 * K, 64 * K, 320 * K}, {64 * K, 64 * K, 0, 0}, {M, 64 * K, 0, 0},
			{20 * M, 64 * K, 0, 0}, {20*M + 64*K, 64 * K, 20*M + 128*K, 20*M + 384*K}}, 1},
		{"nothing to inflate at the end of the layer (a probe of a filesystem's last blocks): read-ahead still runs from the start", []read{
			{63 * M, 4 * K, 0, 0}, {63*M + 4*K, 4 * K, 63*M + 8*K, 63*M + 264*K},
			{0, 64 * K, 0, 0}, {64 * K, 64 * K, 128 * K, 384 * K}}, 2},
		{"the end of the layer bounds the range", []read{
			{62 * M, 512 * K, 0, 0}, {62*M + 512*K, 512 * K, 63 * M, 64 * M},
			{63 * M, 512 * K, 0, 0}, {63*M + 512*K, 512 * K, 0, 0}}, 0},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			s := (&Layer{Size: 64 * M}).NewStream()
			for i, rd := range r.reads {
				from, to := s.advance(rd.off, rd.n)
				if from != rd.from || to != rd.to {
					t.Fatalf("read %d [%d, +%d): read ahead [%d, %d), want [%d, %d)", i, rd.off, rd.n, from, to, rd.from, rd.to)
				}
				if i+1 == r.empty {
					s.idleAfter(from, to)
				}
			}
		})
	}
}
