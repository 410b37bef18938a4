package fs

import (
	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// The FUSE operations each node type answers. go-fuse finds them by
// interface assertion at run time, so a mistyped signature would silently
// fall back to a default; these lines make it a compile error.

var _ = (gofs.NodeOnAdder)((*rootNode)(nil))
var _ = (gofs.NodeLookuper)((*rootNode)(nil))
var _ = (gofs.NodeGetattrer)((*rootNode)(nil))
var _ = (gofs.NodeSetattrer)((*rootNode)(nil))
var _ = (gofs.NodeStatfser)((*rootNode)(nil))

var _ = (gofs.NodeGetattrer)((*rawNode)(nil))
var _ = (gofs.NodeSetattrer)((*rawNode)(nil))
var _ = (gofs.NodeOpener)((*rawNode)(nil))
var _ = (gofs.NodeReader)((*rawNode)(nil))
var _ = (gofs.NodeWriter)((*rawNode)(nil))
var _ = (gofs.NodeAllocater)((*rawNode)(nil))
var _ = (gofs.NodeLseeker)((*rawNode)(nil))

var _ = (gofs.NodeGetattrer)((*renderedNode)(nil))
var _ = (gofs.NodeSetattrer)((*renderedNode)(nil))
var _ = (gofs.NodeOpener)((*renderedNode)(nil))
var _ = (gofs.NodeReader)((*renderedNode)(nil))
var _ = (gofs.NodeWriter)((*renderedNode)(nil))
var _ = (gofs.NodeAllocater)((*renderedNode)(nil))

var _ = (gofs.NodeGetattrer)((*bitmapNode)(nil))
var _ = (gofs.NodeSetattrer)((*bitmapNode)(nil))
var _ = (gofs.NodeOpener)((*bitmapNode)(nil))
var _ = (gofs.NodeReader)((*bitmapNode)(nil))
var _ = (gofs.NodeWriter)((*bitmapNode)(nil))
var _ = (gofs.NodeAllocater)((*bitmapNode)(nil))
