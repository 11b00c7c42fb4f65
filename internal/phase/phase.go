// Package phase times runckit's own work in a container's lifecycle, for
// the bench: the library marks where each phase begins and ends, and a hook
// installed with SetHook receives the durations. With no hook (the normal
// case) Begin returns the zero time without reading the clock and End
// returns at once, so the marks cost one atomic load each.
package phase

import (
	"sync/atomic"
	"time"
)

// Phase is one step of runckit's work around runc.
type Phase int

// The phases, in the order they occur in a lifecycle.
const (
	Checks      Phase = iota // NewContainer's argument, bundle and ID checks, runtime lookup
	Bundle                   // bundle claim, spec read and parse, rootfs mounts
	Cgroups                  // the container's cgroup paths, for cancellation undo
	CreateIO                 // stdio set-up, stale pid file and log removal before runc create
	RuncCreate               // the runc create invocation
	CreateAfter              // pid file read, IO started, after runc create
	Pidfd                    // pidfd_open of a new process
	OOMSetup                 // OOM watch: memory cgroup lookup, counter read, notifier registration
	Namespace                // PID namespace lookup and registration for the orphan reaper
	Watch                    // exit watcher registration
	Publish                  // event publication (queueing; delivery is Deliver)
	Records                  // record writes and start-time reads (WithStateDir)
	RuncStart                // the runc start invocation
	AwaitExecve              // waiting for init or an exec to leave runc init
	Exit                     // exit handling: reap to exit event queued
	RuncDelete               // the runc delete invocation
	Undo                     // delete's undo: OOM watch, bundle files, mounts, ID
	Flush                    // Delete waiting for the sink to receive the delete event
	Deliver                  // sink calls (the delivery goroutine)
	NumPhases
)

var names = [NumPhases]string{
	"checks", "bundle", "cgroups", "create-io", "runc-create", "create-after", "pidfd",
	"oom-setup", "namespace", "watch", "publish", "records", "runc-start", "await-execve",
	"exit", "runc-delete", "undo", "flush", "deliver",
}

func (p Phase) String() string {
	if p >= 0 && p < NumPhases {
		return names[p]
	}
	return "phase?"
}

// IsRunc reports whether p is time spent in runc itself rather than in
// runckit's own code.
func (p Phase) IsRunc() bool { return p == RuncCreate || p == RuncStart || p == RuncDelete }

var hook atomic.Pointer[func(Phase, time.Duration)]

// SetHook installs f to receive every phase's duration, or removes the hook
// when f is nil. f is called from many goroutines at once.
func SetHook(f func(Phase, time.Duration)) {
	if f == nil {
		hook.Store(nil)
		return
	}
	hook.Store(&f)
}

// Begin starts timing a phase: the zero time when no hook is set.
func Begin() time.Time {
	if hook.Load() == nil {
		return time.Time{}
	}
	return time.Now()
}

// End reports the phase begun at t0 to the hook.
func End(p Phase, t0 time.Time) {
	if t0.IsZero() {
		return
	}
	if h := hook.Load(); h != nil {
		(*h)(p, time.Since(t0))
	}
}
