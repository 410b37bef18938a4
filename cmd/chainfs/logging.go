package main

import (
	"flag"
	"fmt"
	"io"
	"log/syslog"
	"os"

	"github.com/sirupsen/logrus"
	lsyslog "github.com/sirupsen/logrus/hooks/syslog"
)

// logFlags are the logging options of the mount command.
type logFlags struct {
	file   string
	level  string
	format string
	debug  bool
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.file, "log-file", "", "append the log to `FILE` (default: stderr in the foreground, syslog in the background)")
	fs.StringVar(&l.level, "log-level", "info", "log `LEVEL`: error, warn, info, debug or trace")
	fs.StringVar(&l.format, "log-format", "text", "log `FORMAT`: text or json")
	fs.BoolVar(&l.debug, "d", false, "shorthand for --log-level debug")
	fs.BoolVar(&l.debug, "debug", false, "shorthand for --log-level debug")
}

// check validates the flags before anything is started.
func (l *logFlags) check() error {
	if _, err := logrus.ParseLevel(l.level); err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	if l.format != "text" && l.format != "json" {
		return fmt.Errorf("--log-format %q: want text or json", l.format)
	}
	return nil
}

// logger builds the logger: to --log-file if given, else to stderr in the
// foreground, else to syslog (daemon facility). In the background without
// syslog the log is lost, which note (when non-empty) says, for the
// caller to pass on while stderr is still a terminal. The returned file is
// the log file (nil for stderr and syslog), for the caller to close.
func (l *logFlags) logger(background bool, stderr io.Writer) (log *logrus.Logger, file *os.File, note string, err error) {
	log = logrus.New()
	level, _ := logrus.ParseLevel(l.level)
	if l.debug && level < logrus.DebugLevel {
		level = logrus.DebugLevel
	}
	log.SetLevel(level)
	if l.format == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true})
	}
	switch {
	case l.file != "":
		f, err := os.OpenFile(l.file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, "", fmt.Errorf("--log-file: %v", err)
		}
		log.SetOutput(f)
		return log, f, "", nil
	case !background:
		log.SetOutput(stderr)
		return log, nil, "", nil
	}
	hook, err := lsyslog.NewSyslogHook("", "", syslog.LOG_DAEMON|syslog.LOG_INFO, "chainfs")
	log.SetOutput(io.Discard)
	if err != nil {
		return log, nil, fmt.Sprintf("no syslog (%v): the background server's log is discarded; use --log-file", err), nil
	}
	log.AddHook(hook)
	return log, nil, "", nil
}
