# Build, install and test chainfs, the way Go system tools are packaged:
#
#   make                        build $(BUILDDIR)/chainfs and its man page
#   sudo make install           install them under $(DESTDIR)$(PREFIX)
#   sudo make uninstall         remove them again
#   make test                   the whole test suite (tests/run-all.sh)
#
# PREFIX is /usr/local: the binary goes to /usr/local/bin, where mount(8)
# finds it for /etc/fstab and "mount -t fuse.chainfs" (it runs chainfs
# through /bin/sh with the shell's default PATH, which has /usr/local/bin
# but never ~/go/bin), and the page to /usr/local/share/man/man1, where
# man(1) finds it. Packagers set PREFIX=/usr and DESTDIR=<staging dir>.

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
BUILDDIR ?= build
GO      ?= go
# The version chainfs reports: git describe of the checkout; empty outside
# one, and chainfs then reports the module version Go recorded.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)

GOFLAGS_BUILD = -trimpath -buildvcs=auto $(if $(VERSION),-ldflags "-X main.version=$(VERSION)")
SOURCES := go.mod go.sum $(shell find cmd fs layers status internal -name '*.go' ! -name '*_test.go' 2>/dev/null)

.PHONY: all build man install uninstall test clean

all: build man

build: $(BUILDDIR)/chainfs
man: $(BUILDDIR)/chainfs.1

# File targets, so that "make && sudo make install" installs what the
# user built instead of building again as root (whose PATH may lack go).
$(BUILDDIR)/chainfs: $(SOURCES)
	@mkdir -p $(BUILDDIR)
	$(GO) build $(GOFLAGS_BUILD) -o $@ ./cmd/chainfs

# The man page has one source, docs/chainfs.1.md, turned into roff by
# go-md2man (a tool dependency in go.mod, so its version is pinned).
$(BUILDDIR)/chainfs.1: docs/chainfs.1.md go.mod go.sum
	@mkdir -p $(BUILDDIR)
	sed 's/@VERSION@/$(or $(VERSION),unknown)/' docs/chainfs.1.md | $(GO) tool go-md2man > $@.tmp
	mv $@.tmp $@

install: $(BUILDDIR)/chainfs $(BUILDDIR)/chainfs.1
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 0755 $(BUILDDIR)/chainfs $(DESTDIR)$(BINDIR)/chainfs
	install -m 0644 $(BUILDDIR)/chainfs.1 $(DESTDIR)$(MANDIR)/man1/chainfs.1

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/chainfs $(DESTDIR)$(MANDIR)/man1/chainfs.1

test:
	bash tests/run-all.sh

clean:
	rm -rf $(BUILDDIR)
