package main

import (
	"bytes"
	"slices"
	"testing"
)

// The end-to-end test (tests/info_test.go) holds chainfs info against
// qemu-img info; these rows pin the pieces it cannot reach easily.

func TestSizeToStr(t *testing.T) {
	for n, want := range map[int64]string{
		0:             "0 B",
		512:           "512 B",
		999:           "999 B",
		1000:          "0.977 KiB",
		4096:          "4 KiB",
		200192:        "196 KiB", // 195.5 rounds to even, as printf does
		397312:        "388 KiB",
		1024000:       "0.977 MiB",
		10485760:      "10 MiB",
		1 << 40 * 4:   "4 TiB",
		1024*1024 + 1: "1 MiB",
		1<<63 - 1:     "8 EiB",
	} {
		if got := sizeToStr(n); got != want {
			t.Errorf("sizeToStr(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestQDictOrder: the orders qemu-img info printed for the keys of
// ImageInfo and ImageInfoSpecificQCow2 (QEMU 7.2 and 10.0 alike).
func TestQDictOrder(t *testing.T) {
	for _, tc := range []struct{ inserted, printed []string }{
		{
			inserted: []string{"compat", "data-file", "data-file-raw", "extended-l2", "lazy-refcounts", "corrupt", "refcount-bits", "compression-type"},
			printed:  []string{"compat", "compression-type", "lazy-refcounts", "refcount-bits", "data-file", "data-file-raw", "corrupt", "extended-l2"},
		},
		{
			inserted: []string{"filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size", "backing-filename", "full-backing-filename", "backing-filename-format", "format-specific", "children"},
			printed:  []string{"children", "backing-filename-format", "virtual-size", "filename", "cluster-size", "format", "actual-size", "format-specific", "full-backing-filename", "backing-filename", "dirty-flag"},
		},
	} {
		var d qDict
		for _, k := range tc.inserted {
			d = append(d, qMember{key: k})
		}
		var got []string
		for _, m := range d.iterOrder() {
			got = append(got, m.key)
		}
		if !slices.Equal(got, tc.printed) {
			t.Errorf("order %q, want %q", got, tc.printed)
		}
	}
}

func TestQJSONStrings(t *testing.T) {
	for in, want := range map[string]string{
		"plain/name.qcow2": `"plain/name.qcow2"`,
		`a"b\c`:            `"a\"b\\c"`,
		"t\tn\nr\rb\bf\f":  `"t\tn\nr\rb\bf\f"`,
		"\x01\x7f":         `"\u0001\u007F"`,
		"é€":               `"\u00E9\u20AC"`,
		"😀":                `"\uD83D\uDE00"`,
		"bad\xffbyte":      `"bad\uFFFDbyte"`,
	} {
		var b bytes.Buffer
		writeQString(&b, in)
		if b.String() != want {
			t.Errorf("%q: %s, want %s", in, b.String(), want)
		}
	}
}

func TestQJSONEmptyContainers(t *testing.T) {
	v, err := toQObject(map[string]any{"children": []int{}, "data": struct{}{}})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	writeQJSON(&b, v, 0)
	want := "{\n    \"children\": [\n    ],\n    \"data\": {\n    }\n}"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestPathCombine: backing names made paths as QEMU's path_combine does,
// as text (the kernel resolves "..", after symlinks).
func TestPathCombine(t *testing.T) {
	for _, tc := range []struct{ base, name, want string }{
		{"top.qcow2", "base.raw", "base.raw"},
		{"sub/top.qcow2", "base.raw", "sub/base.raw"},
		{"sub/link/top.qcow2", "../base.raw", "sub/link/../base.raw"},
		{"/vm/top.qcow2", "./mid.qcow2", "/vm/./mid.qcow2"},
		{"/vm/top.qcow2", "/other/base.raw", "/other/base.raw"},
		{"/top.qcow2", "base.raw", "/base.raw"},
	} {
		if got := pathCombine(tc.base, tc.name); got != tc.want {
			t.Errorf("pathCombine(%q, %q) = %q, want %q", tc.base, tc.name, got, tc.want)
		}
	}
}
