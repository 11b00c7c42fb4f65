package runckittest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/runckit/runckit/runckittest"
)

// failingTB is a test that has failed, whose cleanups run when told and
// whose log is kept.
type failingTB struct {
	testing.TB
	cleanups []func()
	log      strings.Builder
}

func (f *failingTB) Helper()                           {}
func (f *failingTB) Failed() bool                      { return true }
func (f *failingTB) Cleanup(fn func())                 { f.cleanups = append(f.cleanups, fn) }
func (f *failingTB) Logf(format string, args ...any)   { fmt.Fprintf(&f.log, format+"\n", args...) }
func (f *failingTB) Errorf(format string, args ...any) { f.TB.Errorf(format, args...) }

// TestHarnessReportOnFailure: when the test failed, the cleanup writes the
// container's output and its event stream, and still removes it.
func TestHarnessReportOnFailure(t *testing.T) {
	t.Parallel()
	ft := &failingTB{TB: t}
	c := runckittest.Start(ft, runckittest.Options{
		Args: []string{"sh", "-c", "echo to-stdout; echo to-stderr >&2"},
		Wait: []runckittest.Strategy{runckittest.ForExit(0)},
	})
	for i := len(ft.cleanups) - 1; i >= 0; i-- {
		ft.cleanups[i]()
	}
	log := ft.log.String()
	for _, want := range []string{"to-stdout", "to-stderr", "--- events ---", " create ", " start ", " exit "} {
		if !strings.Contains(log, want) {
			t.Errorf("failure report lacks %q:\n%s", want, log)
		}
	}
	if _, err := c.State(t.Context()); err == nil {
		t.Error("container still there after cleanup")
	}
}
