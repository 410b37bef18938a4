package fs

import (
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, r := range []struct{ name, want string }{
		{"plain", "plain"},
		{"with space and ü", "with space and ü"},
		{"a/b", "a%2Fb"},
		{"100%", "100%25"},
		{"tab\there", "tab%09here"},
		{"nul\x00del\x7f", "nul%00del%7F"},
		{"#1", "%231"},
		{"a#1", "a#1"},
		{"##", "%23#"},
		{"\xff\xfe", "\xff\xfe"},
		{"", ""},
	} {
		if got := Escape(r.name); got != r.want {
			t.Errorf("Escape(%q) = %q, want %q", r.name, got, r.want)
		}
	}
}

// TestTagRules: names where they are unique, present and short; IDs
// otherwise; table positions where even the ID will not do. No two tags
// of a layer are equal, whatever the table holds.
func TestTagRules(t *testing.T) {
	long := strings.Repeat("x", 193)
	type snap struct{ id, name string }
	for _, r := range []struct {
		what  string
		snaps []snap
		want  []string
	}{
		{"unique names", []snap{{"1", "a"}, {"2", "b/c"}}, []string{"a", "b%2Fc"}},
		{"an empty name", []snap{{"1", ""}, {"2", "x"}}, []string{"#1", "x"}},
		{"a name shared", []snap{{"1", "s"}, {"2", "s"}, {"3", "t"}}, []string{"#1", "#2", "t"}},
		{"a name looking like a tag", []snap{{"1", "#2"}, {"2", ""}}, []string{"%232", "#2"}},
		{"a name too long", []snap{{"7", long}, {"8", long[:192]}}, []string{"#7", long[:192]}},
		{"IDs shared too", []snap{{"1", ""}, {"1", ""}}, []string{"##0", "##1"}},
		{"an empty ID and name", []snap{{"", ""}}, []string{"##0"}},
		{"an ID with a slash", []snap{{"a/b", ""}}, []string{"#a%2Fb"}},
	} {
		var names, ids []string
		for _, s := range r.snaps {
			ids, names = append(ids, s.id), append(names, s.name)
		}
		got := snapshotTags(ids, names, make([]bool, len(ids)))
		if strings.Join(got, "|") != strings.Join(r.want, "|") {
			t.Errorf("%s: tags %q, want %q", r.what, got, r.want)
		}
	}
}
