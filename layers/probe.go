package layers

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// Probing, as QEMU does it for an image opened without a format (the top
// image without --format, a backing file whose format is not recorded):
// block.c, find_image_format and bdrv_probe_all. QEMU reads the first
// BLOCK_PROBE_BUF_SIZE bytes (as zeroes past the end of a short file),
// asks every format driver for a score, and takes the highest; raw scores
// 1, so it wins only when nothing else claims the file. An empty file is
// raw without asking.
//
// Every driver with a probe in the QEMUs chainfs is held against (7.2 and
// 10.0, as Debian builds them) is listed, with its rule. chainfs reads two
// of them; for any other it refuses the image, naming the format QEMU
// would open it with.

const probeBufSize = 2048 // BLOCK_PROBE_BUF_SIZE

// prober is one format driver's probe function.
type prober struct {
	name  string // QEMU's driver name
	score func(buf []byte, filename string) int
}

// probers, in the order that breaks ties (the first of equal scores
// wins). Only the VDI signature, at offset 64, can coincide with another
// format's magic, at offset 0: QEMU 7.2 and 10.0 both open a file that has
// the qcow or qcow2 magic and the VDI signature as VDI; between VDI and
// another foreign format they differ, and either way the file is refused.
var probers = []prober{
	{"luks", probeLUKS},
	{"bochs", probeBochs},
	{"parallels", probeParallels},
	{"qed", probeQED},
	{"vhdx", probeVHDX},
	{"vmdk", probeVMDK},
	{"vpc", probeVPC},
	{"vdi", probeVDI},
	{"qcow", probeQcow},
	{"qcow2", probeQcow2},
	{"cloop", probeCloop},
	{"dmg", probeDMG},
	{"raw", func([]byte, string) int { return 1 }},
}

// Probe guesses the format of f as QEMU's probing would. It returns
// FormatRaw or FormatQcow2, or an ErrUnsupported error naming the format
// QEMU would pick when that is one chainfs does not read.
func Probe(f *HostFile) (Format, error) {
	if f.Size() == 0 {
		return FormatRaw, nil
	}
	buf := make([]byte, probeBufSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return FormatUnknown, &FormatError{File: f.Name, Msg: "probe format", Err: err}
	}
	best, bestScore := "", 0
	for _, p := range probers {
		if s := p.score(buf, f.Name); s > bestScore {
			best, bestScore = p.name, s
		}
	}
	switch best {
	case "raw":
		return FormatRaw, nil
	case "qcow2":
		return FormatQcow2, nil
	}
	return FormatUnknown, unsupported(f.Name, "%s images are not supported (only qcow2 and raw); QEMU probes this file as %s", best, best)
}

// probeQcow2 is qcow2_probe: the magic and a version of at least 2 (a
// version QEMU's qcow2 driver then refuses still makes it qcow2).
func probeQcow2(b []byte, _ string) int {
	if binary.BigEndian.Uint32(b) == qcow2Magic && binary.BigEndian.Uint32(b[4:]) >= 2 {
		return 100
	}
	return 0
}

// probeQcow is qcow_probe (block/qcow.c): the same magic, version 1.
func probeQcow(b []byte, _ string) int {
	if binary.BigEndian.Uint32(b) == qcow2Magic && binary.BigEndian.Uint32(b[4:]) == 1 {
		return 100
	}
	return 0
}

// probeLUKS is block_crypto_probe_luks: the LUKS magic and version 1
// (QEMU does not read LUKS2).
func probeLUKS(b []byte, _ string) int {
	if bytes.HasPrefix(b, []byte("LUKS\xba\xbe")) && binary.BigEndian.Uint16(b[6:]) == 1 {
		return 100
	}
	return 0
}

// probeBochs is bochs_probe: three NUL-terminated strings and a version.
func probeBochs(b []byte, _ string) int {
	if bytes.HasPrefix(b, []byte("Bochs Virtual HD Image\x00")) &&
		bytes.HasPrefix(b[32:], []byte("Redolog\x00")) &&
		bytes.HasPrefix(b[48:], []byte("Growing\x00")) {
		if v := binary.LittleEndian.Uint32(b[64:]); v == 0x20000 || v == 0x10000 {
			return 100
		}
	}
	return 0
}

// probeParallels is parallels_probe: one of two magics and version 2.
func probeParallels(b []byte, _ string) int {
	if (bytes.HasPrefix(b, []byte("WithoutFreeSpace")) || bytes.HasPrefix(b, []byte("WithouFreSpacExt"))) &&
		binary.LittleEndian.Uint32(b[16:]) == 2 {
		return 100
	}
	return 0
}

func probeQED(b []byte, _ string) int { return magicScore(b, "QED\x00") }

func probeVHDX(b []byte, _ string) int { return magicScore(b, "vhdxfile") }

func probeVPC(b []byte, _ string) int { return magicScore(b, "conectix") }

func magicScore(b []byte, magic string) int {
	if bytes.HasPrefix(b, []byte(magic)) {
		return 100
	}
	return 0
}

// probeVDI is vdi_probe: the signature after the 64-byte text field (the
// text itself is not looked at).
func probeVDI(b []byte, _ string) int {
	if binary.LittleEndian.Uint32(b[64:]) == 0xbeda107f {
		return 100
	}
	return 0
}

// probeVMDK is vmdk_probe: a sparse extent's magic ("KDMV", or "COWD" for
// VMware 3), or a text descriptor whose first line that is not a comment
// or blank is "version=1", "=2" or "=3".
func probeVMDK(b []byte, _ string) int {
	if bytes.HasPrefix(b, []byte("KDMV")) || bytes.HasPrefix(b, []byte("COWD")) {
		return 100
	}
	p := 0
	for p < len(b) {
		switch b[p] {
		case '#': // a comment line
			for p < len(b) && b[p] != '\n' {
				p++
			}
			p++
			continue
		case ' ': // a line of blanks, perhaps ending in \r\n
			for p < len(b) && b[p] == ' ' {
				p++
			}
			if p < len(b) && b[p] == '\r' {
				p++
			}
			if p == len(b) || b[p] != '\n' {
				return 0
			}
			p++
			continue
		}
		for _, v := range []string{"version=1\n", "version=2\n", "version=3\n", "version=1\r\n", "version=2\r\n", "version=3\r\n"} {
			if bytes.HasPrefix(b[p:], []byte(v)) {
				return 100
			}
		}
		return 0
	}
	return 0
}

// probeCloop is cloop_probe: the shell-script header of a version 2.0
// compressed loop image.
func probeCloop(b []byte, _ string) int {
	const magic = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
	if bytes.HasPrefix(b, []byte(magic)) {
		return 2
	}
	return 0
}

// probeDMG is dmg_probe: the file name alone, ending in ".dmg".
func probeDMG(_ []byte, filename string) int {
	if len(filename) > 4 && strings.HasSuffix(filename, ".dmg") {
		return 2
	}
	return 0
}
