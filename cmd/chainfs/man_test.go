package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// manPage is the one source of the man page (the Makefile turns it into
// roff with go-md2man).
const manPage = "../../docs/chainfs.1.md"

// The tests below read what the CLI defines from the CLI itself (each
// command's -h, the command switch in main.go, the mount options in
// mountopts.go) and fail when the page does not document it, so the
// page cannot drift from the code.

// manSections splits the page into its "# " and "## " sections, keyed by
// heading.
func manSections(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	var head string
	var body strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if strings.HasPrefix(line, "# ") || strings.HasPrefix(line, "## ") {
			sections[head] = body.String()
			head = strings.TrimSpace(strings.TrimLeft(line, "#"))
			body.Reset()
			continue
		}
		body.WriteString(line)
	}
	sections[head] = body.String()
	return sections
}

// commands returns the command words of run's switch in main.go, each
// case's first word being the command and the others its aliases.
func commands(t *testing.T) (canonical map[string]string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	canonical = map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "run" {
			return true
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			cc, ok := n.(*ast.CaseClause)
			if !ok {
				return true
			}
			var first string
			for i, e := range cc.List {
				lit, ok := e.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				s, _ := strconv.Unquote(lit.Value)
				if i == 0 {
					first = s
				}
				canonical[s] = first
			}
			return false
		})
		return false
	})
	if len(canonical) == 0 {
		t.Fatal("found no command in main.go's run")
	}
	return canonical
}

var helpFlag = regexp.MustCompile(`(?m)^  -(\S+)`)

// commandFlags runs "chainfs CMD -h" and returns the flags it lists.
func commandFlags(t *testing.T, cmd string) []string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{cmd, "-h"}, &out, &errb); code != exitOK {
		t.Fatalf("chainfs %s -h: exit %d: %s", cmd, code, errb.String())
	}
	var flags []string
	for _, m := range helpFlag.FindAllStringSubmatch(errb.String()+out.String(), -1) {
		flags = append(flags, m[1])
	}
	return flags
}

// documented reports whether text documents flag as **-f** or
// **--flag** (Go's flag package takes both spellings).
func documented(text, flag string) bool {
	return strings.Contains(text, "**-"+flag+"**") || strings.Contains(text, "**--"+flag+"**")
}

var docFlag = regexp.MustCompile(`\*\*--?([a-zA-Z][a-zA-Z0-9-]*)`)

// TestManPageFlags: every command has a section, every flag of a command
// is in its section or under "Common options", and no section documents
// a flag its command does not have.
func TestManPageFlags(t *testing.T) {
	sections := manSections(t)
	common := sections["Common options"]
	for word, cmd := range commands(t) {
		if strings.HasPrefix(word, "-") || cmd == "help" {
			continue
		}
		if word != cmd {
			if !strings.Contains(sections["COMMANDS"]+sections[cmd], "**chainfs "+word+"**") {
				t.Errorf("chainfs %s (the same as chainfs %s) is not in docs/chainfs.1.md: name it as **chainfs %s** in the '## %s' section", word, cmd, word, cmd)
			}
			continue
		}
		sec, ok := sections[cmd]
		if !ok {
			t.Errorf("chainfs %s has no section in docs/chainfs.1.md: add '## %s' under '# COMMANDS', with what it does and its flags, and its line in '# SYNOPSIS'", cmd, cmd)
			continue
		}
		if !strings.Contains(sections["SYNOPSIS"], "**chainfs "+cmd+"**") {
			t.Errorf("chainfs %s is not in the SYNOPSIS of docs/chainfs.1.md: add **chainfs %s** [*options*] ...", cmd, cmd)
		}
		flags := commandFlags(t, cmd)
		for _, f := range flags {
			if !documented(sec, f) && !documented(common, f) {
				dash := "--"
				if len(f) == 1 {
					dash = "-"
				}
				t.Errorf("chainfs %s defines the flag %s%s, which docs/chainfs.1.md does not document: add it to the '## %s' section "+
					"(or to '## Common options' if every command that opens a chain takes it) as\n\n**%s%s** *VALUE*\n:   what it does\n\n"+
					"(without *VALUE* for a boolean flag), then run make man", cmd, dash, f, cmd, dash, f)
			}
		}
		for _, m := range docFlag.FindAllStringSubmatch(sec, -1) {
			if !slices.Contains(flags, m[1]) && !slices.Contains(flags, "!"+m[1]) {
				flags = append(flags, "!"+m[1]) // say it once
				t.Errorf("the '## %s' section of docs/chainfs.1.md documents -%s, which chainfs %s does not define", cmd, m[1], cmd)
			}
		}
	}
	for _, m := range docFlag.FindAllStringSubmatch(common, -1) {
		for _, cmd := range []string{"mount", "info", "map", "depth"} {
			if !slices.Contains(commandFlags(t, cmd), m[1]) {
				t.Errorf("'## Common options' documents -%s, which chainfs %s does not define", m[1], cmd)
			}
		}
	}
}

// mountOptionNames returns every -o option mountopts.go knows: the string
// literals that apply compares an option or its key with (key == "x",
// o == "x", strings.HasPrefix(o, "x-")) and the keys of its option
// tables (map literals of string keys).
func mountOptionNames(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "mountopts.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	add := func(e ast.Expr) {
		if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if s, _ := strconv.Unquote(lit.Value); s != "" {
				seen[s] = true
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			if n.Name.Name != "apply" {
				return true // only for map literals
			}
			ast.Inspect(n.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.BinaryExpr:
					if n.Op == token.EQL {
						add(n.X)
						add(n.Y)
					}
				case *ast.CallExpr:
					if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "HasPrefix" && len(n.Args) == 2 {
						add(n.Args[1])
					}
				}
				return true
			})
			return false
		case *ast.CompositeLit:
			if mt, ok := n.Type.(*ast.MapType); ok {
				if id, ok := mt.Key.(*ast.Ident); ok && id.Name == "string" {
					for _, e := range n.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok {
							add(kv.Key)
						}
					}
				}
			}
		}
		return true
	})
	var names []string
	for s := range seen {
		names = append(names, s)
	}
	slices.Sort(names)
	if len(names) < 10 {
		t.Fatalf("found only %q in mountopts.go", names)
	}
	return names
}

// TestManPageMountOptions: every -o option the CLI knows is in the MOUNT
// OPTIONS section, as **name** or **name=**_VALUE_.
func TestManPageMountOptions(t *testing.T) {
	sec := manSections(t)["MOUNT OPTIONS"]
	for _, o := range mountOptionNames(t) {
		if !strings.Contains(sec, "**"+o+"**") && !strings.Contains(sec, "**"+o+"=**") {
			t.Errorf("mount option %q (cmd/chainfs/mountopts.go) is not in the MOUNT OPTIONS section of docs/chainfs.1.md: add\n\n**%s** (or **%s=**_VALUE_)\n:   what it does\n\nthen run make man", o, o, o)
		}
	}
	// And no line that starts with options (a definition's term, the list
	// of ignored ones) names one the CLI would refuse.
	var terms strings.Builder
	for _, line := range strings.Split(sec, "\n") {
		if strings.HasPrefix(line, "**") {
			terms.WriteString(line + "\n")
		}
	}
	for _, m := range regexp.MustCompile(`\*\*([a-z_][a-z_0-9]*)(=?)\*\*`).FindAllStringSubmatch(terms.String(), -1) {
		o := m[1]
		if m[2] == "=" {
			o += map[string]string{"confine": "=/", "max_read": "=4096"}[m[1]]
			if !strings.Contains(o, "=") {
				o += "=1"
			}
		}
		if _, err := parseMountOpts([]string{o}); err != nil {
			t.Errorf("the MOUNT OPTIONS section documents %s, which chainfs refuses: %v", m[0], err)
		}
	}
}
