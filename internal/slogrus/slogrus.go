// Package slogrus hands the records of a log/slog logger to a logrus
// logger. The layers package logs through log/slog, so that programs using
// it as a library need no logging package of ours; the chainfs command and
// its FUSE frontend log through logrus, and this is where the two meet.
package slogrus

import (
	"context"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// New returns a slog logger whose records go to log: the message as the
// logrus message, the attributes as fields (groups joined with dots), the
// level mapped to logrus's (anything above warning is an error).
func New(log logrus.FieldLogger) *slog.Logger {
	return slog.New(&handler{log: log})
}

type handler struct {
	log    logrus.FieldLogger
	fields logrus.Fields
	group  string
}

func (h *handler) Enabled(_ context.Context, level slog.Level) bool {
	if l, ok := h.log.(interface{ IsLevelEnabled(logrus.Level) bool }); ok {
		return l.IsLevelEnabled(logrusLevel(level))
	}
	if e, ok := h.log.(*logrus.Entry); ok {
		return e.Logger.IsLevelEnabled(logrusLevel(level))
	}
	return true
}

func logrusLevel(l slog.Level) logrus.Level {
	switch {
	case l >= slog.LevelError:
		return logrus.ErrorLevel
	case l >= slog.LevelWarn:
		return logrus.WarnLevel
	case l >= slog.LevelInfo:
		return logrus.InfoLevel
	}
	return logrus.DebugLevel
}

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	fields := make(logrus.Fields, len(h.fields)+r.NumAttrs())
	for k, v := range h.fields {
		fields[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(fields, h.group, a)
		return true
	})
	e := h.log.WithFields(fields)
	switch logrusLevel(r.Level) {
	case logrus.ErrorLevel:
		e.Error(r.Message)
	case logrus.WarnLevel:
		e.Warn(r.Message)
	case logrus.InfoLevel:
		e.Info(r.Message)
	default:
		e.Debug(r.Message)
	}
	return nil
}

func addAttr(fields logrus.Fields, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	key := a.Key
	if prefix != "" {
		key = prefix + "." + key
	}
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			addAttr(fields, key, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	fields[key] = v.Any()
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &handler{log: h.log, group: h.group, fields: make(logrus.Fields, len(h.fields)+len(attrs))}
	for k, v := range h.fields {
		n.fields[k] = v
	}
	for _, a := range attrs {
		addAttr(n.fields, h.group, a)
	}
	return n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &handler{log: h.log, fields: h.fields, group: g}
}
