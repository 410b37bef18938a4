package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// qemu-img info prints its JSON, and the nested parts of its text output,
// by walking QEMU's QObject tree, whose dictionaries iterate in hash order
// (qobject/qdict.c): not sorted and not in field order, yet the same on
// every run. Walking the same order here makes `chainfs info` print the
// bytes qemu-img does, so that diff shows nothing but chainfs's own key.

// qObject is a JSON value with the order of its object members kept:
// qDict, []any, string, json.Number, bool or nil.
type qObject = any

// qDict is a JSON object as a list of members in insertion order.
type qDict []qMember

type qMember struct {
	key string
	val qObject
}

// toQObject turns v into a qObject by way of encoding/json, so that struct
// tags and omitempty decide the keys and the struct field order is the
// insertion order (for QAPI types: the order of the schema's fields, in
// which QEMU's output visitor inserts them).
func toQObject(v any) (qObject, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return decodeQObject(d)
}

func decodeQObject(d *json.Decoder) (qObject, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		dict := qDict{}
		for d.More() {
			k, err := d.Token()
			if err != nil {
				return nil, err
			}
			v, err := decodeQObject(d)
			if err != nil {
				return nil, err
			}
			dict = append(dict, qMember{k.(string), v})
		}
		_, err = d.Token()
		return dict, err
	case json.Delim('['):
		list := []any{}
		for d.More() {
			v, err := decodeQObject(d)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err = d.Token()
		return list, err
	}
	return tok, nil
}

// qdictBuckets is QDICT_BUCKET_MAX, the size of a QDict's hash table.
const qdictBuckets = 512

// qdictHash is the hash QDict files its keys by (qdict.c, tdb_hash, from
// Samba's TDB), in 32-bit unsigned arithmetic.
func qdictHash(key string) uint32 {
	v := 0x238F13AF * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return 1103515243*v + 12345
}

// iterOrder returns d's members in the order a QDict built by inserting
// them in d's order iterates them: by bucket, and within a bucket the
// latest inserted first (each bucket is a list grown at its head).
func (d qDict) iterOrder() qDict {
	type ranked struct {
		bucket uint32
		pos    int
	}
	idx := make([]ranked, len(d))
	for i, m := range d {
		idx[i] = ranked{qdictHash(m.key) % qdictBuckets, i}
	}
	slices.SortFunc(idx, func(a, b ranked) int {
		if a.bucket != b.bucket {
			return int(a.bucket) - int(b.bucket)
		}
		return b.pos - a.pos
	})
	out := make(qDict, len(d))
	for i, r := range idx {
		out[i] = d[r.pos]
	}
	return out
}

// writeQJSON writes v as QEMU's pretty JSON writer does
// (qobject/json-writer.c): members one per line, four spaces per level,
// an empty container still broken over two lines, dictionaries in QDict
// order, and strings escaped to ASCII.
func writeQJSON(w *bytes.Buffer, v qObject, level int) {
	newline := func(level int) {
		w.WriteByte('\n')
		w.WriteString(strings.Repeat(" ", 4*level))
	}
	switch v := v.(type) {
	case qDict:
		w.WriteByte('{')
		for i, m := range v.iterOrder() {
			if i > 0 {
				w.WriteByte(',')
			}
			newline(level + 1)
			writeQString(w, m.key)
			w.WriteString(": ")
			writeQJSON(w, m.val, level+1)
		}
		newline(level)
		w.WriteByte('}')
	case []any:
		w.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				w.WriteByte(',')
			}
			newline(level + 1)
			writeQJSON(w, e, level+1)
		}
		newline(level)
		w.WriteByte(']')
	case string:
		writeQString(w, v)
	case nil:
		w.WriteString("null")
	default: // json.Number, bool
		fmt.Fprint(w, v)
	}
}

// writeQString quotes s as QEMU's JSON writer does: the two-character
// escapes for quote, backslash and \b \f \n \r \t, \uXXXX (upper-case hex,
// surrogate pairs past the BMP) for every other code point below 0x20 or
// from 0x7F up, and U+FFFD for bytes that are not UTF-8.
func writeQString(w *bytes.Buffer, s string) {
	w.WriteByte('"')
	for _, r := range s { // invalid UTF-8 comes as U+FFFD
		switch r {
		case '"':
			w.WriteString(`\"`)
		case '\\':
			w.WriteString(`\\`)
		case '\b':
			w.WriteString(`\b`)
		case '\f':
			w.WriteString(`\f`)
		case '\n':
			w.WriteString(`\n`)
		case '\r':
			w.WriteString(`\r`)
		case '\t':
			w.WriteString(`\t`)
		default:
			switch {
			case r > 0xFFFF:
				r -= 0x10000
				fmt.Fprintf(w, `\u%04X\u%04X`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
			case r < 0x20 || r >= 0x7F:
				fmt.Fprintf(w, `\u%04X`, r)
			default:
				w.WriteRune(r)
			}
		}
	}
	w.WriteByte('"')
}

// dumpQObject writes v as qemu-img's text output shows nested data (block/
// qapi.c, dump_qobject): "key: value" per line with dashes in keys shown
// as spaces, "[i]:" for list elements, a container's contents on the
// following lines one level (four spaces) further in.
func dumpQObject(w io.Writer, v qObject, level int) {
	entry := func(label string, val qObject) {
		_, composite := val.(qDict)
		if _, list := val.([]any); list {
			composite = true
		}
		sep := " "
		if composite {
			sep = "\n"
		}
		fmt.Fprintf(w, "%s%s:%s", strings.Repeat(" ", 4*level), label, sep)
		dumpQObject(w, val, level+1)
		if !composite {
			fmt.Fprintln(w)
		}
	}
	switch v := v.(type) {
	case qDict:
		for _, m := range v.iterOrder() {
			entry(strings.ReplaceAll(m.key, "-", " "), m.val)
		}
	case []any:
		for i, e := range v {
			entry(fmt.Sprintf("[%d]", i), e)
		}
	default:
		fmt.Fprint(w, v)
	}
}
