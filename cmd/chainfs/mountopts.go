package main

import (
	"fmt"
	"strconv"
	"strings"

	chainfs "github.com/chainfs/chainfs/fs"
)

// optList collects repeated -o flags.
type optList []string

func (o *optList) String() string { return strings.Join(*o, ",") }
func (o *optList) Set(s string) error {
	*o = append(*o, s)
	return nil
}

// mountOpts is what -o options ask for.
type mountOpts struct {
	fs         chainfs.Options
	forceShare bool
	strict     bool     // -o strict
	confine    string   // -o confine=DIR
	maxDepth   int      // -o max_depth=N; 0: not given
	notes      []string // options accepted without effect, for the debug log
}

// ignoredOpts are accepted and have no effect: mount(8) and systemd
// options that /etc/fstab lines carry and mount.fuse3 may pass on, and
// flags that mean nothing for a read-only view without device nodes or
// setuid files (it is always mounted ro, nosuid, nodev).
var ignoredOpts = map[string]string{
	"ro": "", "rw": "chainfs is always read-only", "defaults": "",
	"auto": "", "noauto": "", "user": "", "users": "", "nouser": "", "owner": "", "group": "",
	"nofail": "", "_netdev": "", "nonempty": "",
	"dev": "no device nodes to honour", "nodev": "", "suid": "no setuid files to honour", "nosuid": "",
	"sync": "", "async": "", "dirsync": "",
	"atime": "", "noatime": "", "relatime": "", "norelatime": "", "strictatime": "", "nostrictatime": "",
	"diratime": "", "nodiratime": "", "lazytime": "", "nolazytime": "",
	"loud": "", "silent": "", "iversion": "", "noiversion": "", "mand": "", "nomand": "",
}

// passedOpts go to fusermount3 unchanged.
var passedOpts = map[string]bool{"exec": true, "noexec": true, "auto_unmount": true}

// parseMountOpts applies a list of -o arguments (each comma-separated).
// allow_other and allow_root imply default_permissions: the files keep the
// image's owner and read bits, and the kernel must enforce them once other
// users can reach the mount.
func parseMountOpts(lists []string) (*mountOpts, error) {
	m := &mountOpts{}
	for _, list := range lists {
		for _, o := range strings.Split(list, ",") {
			if err := m.apply(strings.TrimSpace(o)); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *mountOpts) apply(o string) error {
	key, val, hasVal := strings.Cut(o, "=")
	switch {
	case o == "":
		return nil
	case key == "allow_other" && !hasVal:
		m.fs.AllowOther = true
		m.fs.DefaultPermissions = true
	case key == "allow_root" && !hasVal:
		m.fs.ExtraOptions = append(m.fs.ExtraOptions, o)
		m.fs.DefaultPermissions = true
	case key == "default_permissions" && !hasVal:
		m.fs.DefaultPermissions = true
	case key == "debug" && !hasVal:
		m.fs.Debug = true
	case key == "force_share" && !hasVal:
		m.forceShare = true
	case key == "strict" && !hasVal:
		m.strict = true
	case key == "confine" && hasVal && val != "":
		m.confine = val
	case key == "max_depth" && hasVal:
		n, err := strconv.Atoi(val)
		if err != nil || n < 1 {
			return fmt.Errorf("-o %s: want a layer count of at least 1", o)
		}
		m.maxDepth = n
	case key == "fsname" && hasVal:
		m.fs.FsName = val
	case key == "subtype" && hasVal:
		m.notes = append(m.notes, o+": the type is always fuse.chainfs")
	case key == "max_read" && hasVal:
		n, err := strconv.Atoi(val)
		if err != nil || n < 4096 {
			return fmt.Errorf("-o %s: want a byte count of at least 4096", o)
		}
		m.fs.MaxRead = n
	case passedOpts[o]:
		m.fs.ExtraOptions = append(m.fs.ExtraOptions, o)
	case strings.HasPrefix(o, "x-") || key == "comment":
		m.notes = append(m.notes, o+": for mount(8) and systemd")
	default:
		why, ok := ignoredOpts[o]
		if !ok {
			return fmt.Errorf("unknown mount option %q (see chainfs mount -h)", o)
		}
		if why != "" {
			m.notes = append(m.notes, o+": "+why)
		}
	}
	return nil
}
