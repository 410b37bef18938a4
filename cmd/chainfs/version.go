package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// version is stamped at link time by the Makefile
// (-ldflags "-X main.version=$(git describe)"). Other builds leave it
// empty and report the module version Go recorded: a release tag for
// "go install ...@vX.Y.Z", a pseudo-version from the git checkout, or
// "(devel)".
var version string

// versionString is the version chainfs reports and logs.
func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// cmdVersion prints the version and what Go recorded of the build
// (the format of "go version -m": go version, module path and version,
// every dependency with its checksum, build settings and VCS revision),
// for bug reports and for checking what a machine has installed.
func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("version", "version\n\nPrints the version and the Go module build information.\n", stderr)
	pos, err := parseArgs(fset, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 0 {
		fmt.Fprintf(stderr, "chainfs version: takes no arguments, got %q\n", pos)
		return exitUsage
	}
	fmt.Fprintf(stdout, "chainfs %s\n", versionString())
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprint(stdout, bi.String())
	}
	return exitOK
}
