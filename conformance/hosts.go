package main

import (
	"fmt"
	"os"
	"strings"
)

// hostsMark ends every line the runner adds to /etc/hosts, so a run that
// was SIGKILLed leaves lines the next run can recognise and drop.
const hostsMark = "# runckit-conformance: temporary, removed after the run"

// hostsEdit points registry names at loopback for one run and puts the
// file back afterwards.
type hostsEdit struct {
	path     string
	original []byte
	changed  bool
}

// withoutMarked returns content without the lines an earlier run added.
func withoutMarked(content string) (string, int) {
	var keep []string
	dropped := 0
	lines := strings.SplitAfter(content, "\n")
	for _, l := range lines {
		if strings.Contains(l, hostsMark) {
			dropped++
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, ""), dropped
}

// rewrite writes content into the existing file (truncate and write), so
// its inode stays: /etc/hosts is often a bind mount.
func rewrite(path string, content []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pointAtLoopback adds "127.0.0.1 <host>" for each host.
func pointAtLoopback(path string, hosts []string) (*hostsEdit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	clean, dropped := withoutMarked(string(b))
	if dropped > 0 {
		say("dropping %d lines a killed earlier run left in %s", dropped, path)
	}
	e := &hostsEdit{path: path, original: []byte(clean)}
	var add strings.Builder
	add.WriteString(clean)
	if clean != "" && !strings.HasSuffix(clean, "\n") {
		add.WriteString("\n")
	}
	for _, h := range hosts {
		fmt.Fprintf(&add, "127.0.0.1 %s %s\n", h, hostsMark)
	}
	e.changed = true
	if err := rewrite(path, []byte(add.String())); err != nil {
		e.restore()
		return nil, err
	}
	return e, nil
}

// restore puts back the file as it was before the run.
func (e *hostsEdit) restore() {
	if e == nil || !e.changed {
		return
	}
	if err := rewrite(e.path, e.original); err != nil {
		say("could not restore %s: %v (remove the lines ending in %q by hand)", e.path, err, hostsMark)
		return
	}
	e.changed = false
	say("restored %s", e.path)
}
