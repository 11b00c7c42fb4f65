package runckit_test

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runckit/runckit/runckittest"
)

// runckittest.IgnoreRunckitGoroutines hides exactly runckit's
// program-lifetime goroutines from goleak: without it the reaper is
// reported, with it neither the reaper nor its signal goroutine is.
func TestIgnoreRunckitGoroutines(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	e.sleeper(ctx) // the reaper runs from the first container on; the
	// container's own goroutines (its exit watcher) are reported either way.
	err := goleak.Find()
	if err == nil || !strings.Contains(err.Error(), "orphanReaper") {
		t.Fatalf("goleak without the options does not report runckit's reaper: %v", err)
	}
	err = goleak.Find(runckittest.IgnoreRunckitGoroutines()...)
	if err != nil {
		for _, name := range []string{"orphanReaper", "os/signal.signal_recv", "os/signal.loop"} {
			if strings.Contains(err.Error(), name) {
				t.Errorf("goleak with IgnoreRunckitGoroutines still reports %s:\n%v", name, err)
			}
		}
	}
}
