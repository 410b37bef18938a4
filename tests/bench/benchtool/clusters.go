package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/chainfs/chainfs/layers"
)

// cmdClusters writes the compressed clusters of a qcow2 image to OUT, for
// tests/bench/decoders.sh: each stream as a little-endian uint32 length
// and the stream as the image stores it (padded to its sectors). It
// prints the cluster size.
func cmdClusters(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: clusters IMAGE OUT")
	}
	c, err := layers.Open(args[0], nil)
	if err != nil {
		return err
	}
	defer c.Close()
	l := c.Top()
	exts, err := l.Status(nil, 0, l.Size)
	if err != nil {
		return err
	}
	f, err := os.Create(args[1])
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	n := 0
	for _, e := range exts {
		if e.Kind != layers.Compressed {
			continue
		}
		s := make([]byte, e.CompressedSize)
		if _, err := e.File.ReadAt(s, e.HostOffset); err != nil {
			f.Close()
			return err
		}
		w.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(s))))
		w.Write(s)
		n++
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if n == 0 {
		f.Close()
		return fmt.Errorf("%s: no compressed clusters", args[0])
	}
	fmt.Println(l.ClusterSize)
	return f.Close()
}
