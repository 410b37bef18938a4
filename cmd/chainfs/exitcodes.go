package main

// Exit codes of the chainfs command, one per way it can fail, so scripts
// and mount(8) can tell them apart. A background mount exits with the code
// its serving process failed with.
const (
	exitOK = 0
	// exitFailure: a command failed at run time (rendering a map, an
	// unreadable layer).
	exitFailure = 1
	// exitUsage: bad command line, unknown subcommand, flag or -o option.
	exitUsage = 2
	// exitImage: the image or its backing chain could not be opened.
	exitImage = 3
	// exitMountpoint: the mount point is missing or not a directory.
	exitMountpoint = 4
	// exitMount: the FUSE mount itself failed (fusermount3, /dev/fuse).
	exitMount = 5
	// exitUnmount: unmounting failed, even lazily.
	exitUnmount = 6
	// exitDaemon: the background server died before saying whether the
	// mount worked.
	exitDaemon = 7
)
