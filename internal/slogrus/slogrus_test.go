package slogrus

import (
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestRecordsBecomeEntries(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.InfoLevel)
	s := New(log).With("file", "top.qcow2").WithGroup("l2")
	s.Debug("not shown")
	s.Warn("table past end of file", "offset", 4096)
	entries := hook.AllEntries()
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1 (debug is below the level)", len(entries))
	}
	e := entries[0]
	if e.Level != logrus.WarnLevel || e.Message != "table past end of file" ||
		e.Data["file"] != "top.qcow2" || e.Data["l2.offset"] != int64(4096) {
		t.Errorf("entry %v %q %v", e.Level, e.Message, e.Data)
	}
}
