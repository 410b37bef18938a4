package imagetest

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// InnerCase is a backing chain whose images keep internal snapshots or
// persistent bitmaps, built with qemu-img and qemu-io. The packages that
// read them (layers, status, the mounts in tests) share these rows, each
// comparing what it makes of them with QEMU's tools.
type InnerCase struct {
	Name string
	// Build makes the chain in dir and returns the top image's path.
	Build func(t testing.TB, dir string) string
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// SnapshotCases are chains with internal snapshots: taken before and after
// writes, discards and zero writes, across a resize that grew and one that
// shrank, in backing layers, over compressed clusters and extended L2
// entries, in a version 2 image, and two hand-made ones (VM state past the
// disk, an L1 table shorter than the disk).
func SnapshotCases() []InnerCase {
	return []InnerCase{
		{"snapshots before and after writes, discards and zero writes, over a raw base", func(t testing.TB, dir string) string {
			base := Create(t, dir, "base.raw", "raw", 4*mib)
			QemuIO(t, "raw", base, "write -P 0x11 0 4M")
			top := Create(t, dir, "top.qcow2", "qcow2", 4*mib, "backing_file=base.raw", "backing_fmt=raw")
			Snapshot(t, top, "empty")
			QemuIO(t, "qcow2", top, "write -P 1 0 256k", "write -P 2 1M 64k", "write -P 3 3M 8k")
			Snapshot(t, top, "written: 50% done")
			QemuIO(t, "qcow2", top, "discard 0 64k", "write -z 128k 64k", "write -z -u 1M 64k")
			Snapshot(t, top, "zeroed/discarded")
			QemuIO(t, "qcow2", top, "write -P 4 64k 64k", "write -P 5 1M 4k", "discard 3M 64k")
			return top
		}},
		{"snapshots across a resize that grew and one that shrank, 512-byte clusters", func(t testing.TB, dir string) string {
			p := Create(t, dir, "resized.qcow2", "qcow2", 1*mib, "cluster_size=512")
			QemuIO(t, "qcow2", p, "write -P 1 0 1M")
			Snapshot(t, p, "at 1M")
			QemuImg(t, "resize", "-q", "-f", "qcow2", p, "3M")
			QemuIO(t, "qcow2", p, "write -P 2 2M 512k", "write -z 100k 50k")
			Snapshot(t, p, "at 3M")
			QemuImg(t, "resize", "-q", "-f", "qcow2", "--shrink", p, "512k")
			Snapshot(t, p, "at 512k")
			QemuIO(t, "qcow2", p, "write -P 3 0 64k")
			return p
		}},
		{"snapshots in backing layers", func(t testing.TB, dir string) string {
			base := Create(t, dir, "base.qcow2", "qcow2", 2*mib)
			QemuIO(t, "qcow2", base, "write -P 0xa 0 2M")
			Snapshot(t, base, "base-1")
			QemuIO(t, "qcow2", base, "write -P 0xb 512k 512k")
			Snapshot(t, base, "base-2")
			QemuIO(t, "qcow2", base, "write -z 0 64k")
			mid := Create(t, dir, "mid.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
			QemuIO(t, "qcow2", mid, "write -P 0xc 1M 64k")
			Snapshot(t, mid, "mid-1")
			QemuIO(t, "qcow2", mid, "write -P 0xd 1M 4k", "write -z 1536k 64k")
			top := Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=mid.qcow2", "backing_fmt=qcow2")
			QemuIO(t, "qcow2", top, "write -P 0xe 0 4k")
			return top
		}},
		{"compressed clusters in snapshots, zstd", func(t testing.TB, dir string) string {
			p := Create(t, dir, "z.qcow2", "qcow2", 1*mib, "compression_type=zstd", "cluster_size=4096")
			QemuIO(t, "qcow2", p, "write -c -P 1 0 256k", "write -P 2 256k 64k")
			Snapshot(t, p, "s1")
			QemuIO(t, "qcow2", p, "write -P 3 0 64k", "write -c -P 4 512k 64k")
			Snapshot(t, p, "s2")
			QemuIO(t, "qcow2", p, "discard 0 128k", "write -c -P 5 640k 8k")
			return p
		}},
		{"extended L2 in snapshots, over a raw base", func(t testing.TB, dir string) string {
			base := Create(t, dir, "base.raw", "raw", 1*mib)
			QemuIO(t, "raw", base, "write -P 0x55 0 1M")
			p := Create(t, dir, "ext.qcow2", "qcow2", 1*mib, "extended_l2=on", "cluster_size=64k", "backing_file=base.raw", "backing_fmt=raw")
			QemuIO(t, "qcow2", p, "write -P 1 0 2k", "write -z 8k 4k", "write -P 6 200k 3k")
			Snapshot(t, p, "s1")
			QemuIO(t, "qcow2", p, "write -P 2 4k 4k", "discard 0 2k", "write -z -u 64k 64k")
			Snapshot(t, p, "s2")
			QemuIO(t, "qcow2", p, "write -P 3 0 64k")
			return p
		}},
		{"snapshots of a version 2 image", func(t testing.TB, dir string) string {
			p := Create(t, dir, "v2.qcow2", "qcow2", 2*mib, "compat=0.10", "cluster_size=4096")
			QemuIO(t, "qcow2", p, "write -P 1 0 1M")
			Snapshot(t, p, "v2-a")
			QemuIO(t, "qcow2", p, "write -P 2 512k 1M")
			Snapshot(t, p, "v2-b")
			QemuIO(t, "qcow2", p, "write -P 3 0 4k")
			return p
		}},
		{"a snapshot with VM state past its disk (hand-made)", func(t testing.TB, dir string) string {
			// 512-byte clusters: an L2 table maps 32 KiB. The data
			// written at 32k becomes VM state once the snapshot records
			// a disk of 32 KiB and 32 KiB of VM state, as savevm lays
			// it out (from the L2 span after the disk).
			p := Create(t, dir, "vm.qcow2", "qcow2", 64*kib, "cluster_size=512")
			QemuIO(t, "qcow2", p, "write -P 1 0 32k", "write -P 9 32k 32k")
			Snapshot(t, p, "with-vm-state")
			e := SnapshotEntry(t, p, 0)
			PatchBE32(t, p, e+32, 32*kib)
			PatchBE64(t, p, e+40, 32*kib)
			PatchBE64(t, p, e+48, 32*kib)
			QemuIO(t, "qcow2", p, "write -P 2 0 4k")
			return p
		}},
		{"a snapshot whose L1 table is shorter than its disk (hand-made)", func(t testing.TB, dir string) string {
			p := Create(t, dir, "short.qcow2", "qcow2", 1*mib, "cluster_size=512")
			QemuIO(t, "qcow2", p, "write -P 1 0 1M")
			Snapshot(t, p, "short-l1")
			PatchBE32(t, p, SnapshotEntry(t, p, 0)+8, 4) // 4 L1 entries: 128 KiB
			QemuIO(t, "qcow2", p, "write -P 2 0 1M")
			return p
		}},
	}
}

// BitmapCases are chains with persistent dirty bitmaps: granularities
// from 512 B to 1 MiB, enabled and disabled, several per image, a disk
// size that is not a multiple of the granularity, bitmaps in backing
// layers, a large bitmap of many runs, and a hand-made all-ones table
// entry.
func BitmapCases() []InnerCase {
	return []InnerCase{
		{"granularities 512 B to 1 MiB, one disabled, a disk size not a multiple of the granularity", func(t testing.TB, dir string) string {
			p := Create(t, dir, "g.qcow2", "qcow2", 3*mib+512)
			AddBitmap(t, p, "g512", "-g", "512")
			AddBitmap(t, p, "g4k", "-g", "4k")
			AddBitmap(t, p, "g64k", "-g", "64k")
			AddBitmap(t, p, "g1M", "-g", "1M")
			AddBitmap(t, p, "disabled", "-g", "64k", "--disable")
			QemuIO(t, "qcow2", p, "write -P 1 0 1000", "write -P 2 700k 300k", "write -z 2M 100k", "write -P 3 3M 512")
			QemuImg(t, "bitmap", "-f", "qcow2", "--disable", p, "g4k")
			QemuIO(t, "qcow2", p, "discard 1536k 64k", "write -P 4 2560k 1k")
			return p
		}},
		{"bitmaps in backing layers", func(t testing.TB, dir string) string {
			base := Create(t, dir, "base.qcow2", "qcow2", 2*mib)
			AddBitmap(t, base, "base-bm", "-g", "4k")
			QemuIO(t, "qcow2", base, "write -P 1 0 100k", "write -P 2 1M 64k")
			mid := Create(t, dir, "mid.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
			AddBitmap(t, mid, "mid-bm", "-g", "16k")
			AddBitmap(t, mid, "mid-other", "-g", "512")
			QemuIO(t, "qcow2", mid, "write -P 3 500k 10k", "write -z 1500k 8k")
			top := Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=mid.qcow2", "backing_fmt=qcow2")
			QemuIO(t, "qcow2", top, "write -P 4 0 4k")
			return top
		}},
		{"a bitmap of many runs over 1 GiB, two table entries", func(t testing.TB, dir string) string {
			p := Create(t, dir, "big.qcow2", "qcow2", 1<<30)
			AddBitmap(t, p, "fine", "-g", "1k")
			AddBitmap(t, p, "coarse", "-g", "1M")
			rng := rand.New(rand.NewPCG(9, 9))
			var cmds []string
			for range 300 {
				cmds = append(cmds, fmt.Sprintf("write -P 7 %d %d", rng.Int64N(1<<30-64*kib)&^511, 512*(1+rng.Int64N(100))))
			}
			QemuIO(t, "qcow2", p, cmds...)
			return p
		}},
		{"an all-ones bitmap table entry (hand-made)", func(t testing.TB, dir string) string {
			// 512-byte clusters at 512-byte granularity: a table entry
			// covers 4096 bits, 2 MiB of disk; 8 MiB take four.
			p := Create(t, dir, "ones.qcow2", "qcow2", 8*mib, "cluster_size=512")
			AddBitmap(t, p, "b", "-g", "512")
			QemuIO(t, "qcow2", p, "write -P 1 100k 4k", "write -P 2 2500k 1k", "write -P 3 7M 2k")
			table := int64(ReadBE64(t, p, BitmapEntry(t, p, 0)))
			PatchBE64(t, p, table+8, 1) // entry 1: no cluster, all ones
			return p
		}},
	}
}
