package runckit_test

import (
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/runckit/runckit"
)

// This file holds an event-stream checker for DESIGN.md rules 1-5, shared
// by the stress test and the fuzz targets. The core, streamState.feed, is a
// pure function of one container's event sequence; eventChecker wraps it as
// an EventSink for many containers and compares what was delivered with the
// exits a test expects.

// execTrack is one exec ID's current life in a stream. An exec ID is freed by
// Process.Delete and may be added again, which starts a new life.
type execTrack struct {
	started bool
	exited  bool
	pid     int
}

// streamState follows one container's events. Its zero value is a stream
// that has seen nothing.
type streamState struct {
	lastSeq     uint64
	created     bool
	initPid     int
	initStarted bool
	initExited  bool
	initStatus  runckit.ExitStatus
	deleted     bool
	paused      bool
	execs       map[string]*execTrack

	events     int
	violations int
	duplicates int
	// exits lists every exit event of the stream, by exec ID ("" is init).
	exits map[string][]runckit.Event
}

// violation is one broken rule, for messages.
type violation struct {
	Rule  int // DESIGN.md rule
	Event runckit.Event
	What  string
}

func (v violation) String() string {
	return fmt.Sprintf("rule %d: %s: %v", v.Rule, v.What, v.Event)
}

// feed checks e against what the stream has seen and returns the rules it
// breaks. It never panics, whatever e holds.
func (s *streamState) feed(e runckit.Event) (vs []violation) {
	defer func() { s.violations += len(vs) }()
	bad := func(rule int, format string, args ...any) {
		vs = append(vs, violation{Rule: rule, Event: e, What: fmt.Sprintf(format, args...)})
	}
	if s.execs == nil {
		s.execs = make(map[string]*execTrack)
		s.exits = make(map[string][]runckit.Event)
	}
	s.events++

	// Rule 5: one stream, in order, numbered 1, 2, 3...
	if e.Seq != s.lastSeq+1 {
		bad(5, "seq %d follows %d", e.Seq, s.lastSeq)
	}
	s.lastSeq = e.Seq
	// Rule 3: create first, delete last.
	if s.events == 1 && e.Kind != runckit.EventCreate {
		bad(3, "first event is %v, not create", e.Kind)
	}
	if s.deleted {
		bad(3, "event after delete")
	}

	switch e.Kind {
	case runckit.EventCreate, runckit.EventStart, runckit.EventDelete, runckit.EventPause, runckit.EventResume, runckit.EventOOM:
		if e.ExecID != "" {
			bad(4, "container-wide %v event names exec %q", e.Kind, e.ExecID)
		}
	case runckit.EventExecAdded, runckit.EventExecStarted:
		if e.ExecID == "" {
			bad(4, "%v event names no exec", e.Kind)
			return vs
		}
	}

	switch e.Kind {
	case runckit.EventCreate:
		if s.created {
			bad(3, "second create")
		} else {
			s.created = true
			s.initPid = e.Pid
		}
	case runckit.EventStart:
		switch {
		case s.initStarted:
			bad(1, "init started twice")
		case s.initExited:
			bad(1, "init start after init's exit")
		}
		if s.created && e.Pid != s.initPid {
			bad(4, "start pid %d, create said %d", e.Pid, s.initPid)
		}
		s.initStarted = true
	case runckit.EventExecAdded:
		if s.initExited {
			bad(2, "exec added after init's exit")
		}
		if x := s.execs[e.ExecID]; x != nil && x.started && !x.exited {
			bad(4, "exec %q added again while it runs", e.ExecID)
		}
		s.execs[e.ExecID] = &execTrack{}
	case runckit.EventExecStarted:
		x := s.execs[e.ExecID]
		switch {
		case x == nil:
			bad(1, "exec %q started without exec-added", e.ExecID)
			x = &execTrack{}
			s.execs[e.ExecID] = x
		case x.exited:
			bad(1, "exec %q started after its exit", e.ExecID)
		case x.started:
			bad(1, "exec %q started twice", e.ExecID)
		}
		if !s.initStarted {
			bad(1, "exec %q started before init's start", e.ExecID)
		}
		if s.initExited {
			bad(2, "exec %q started after init's exit", e.ExecID)
		}
		x.started, x.pid = true, e.Pid
	case runckit.EventExit:
		s.exits[e.ExecID] = append(s.exits[e.ExecID], e)
		if e.ExecID == "" {
			if s.initExited {
				bad(4, "init exit delivered twice")
				s.duplicates++
				break
			}
			// An init killed before it started exits with no start event;
			// a start that comes later is flagged at the start.
			if s.created && e.Pid != s.initPid {
				bad(4, "init exit for pid %d, init is %d", e.Pid, s.initPid)
			}
			s.initExited, s.initStatus = true, e.Status
			break
		}
		x := s.execs[e.ExecID]
		switch {
		case x == nil || !x.started:
			bad(1, "exec %q exit before its exec-started", e.ExecID)
		case x.exited:
			bad(4, "exec %q exit delivered twice", e.ExecID)
			s.duplicates++
		default:
			if e.Pid != x.pid {
				bad(4, "exec %q exit for pid %d, it started as %d", e.ExecID, e.Pid, x.pid)
			}
		}
		if s.initExited {
			bad(2, "exec %q exit after init's exit", e.ExecID)
		}
		if x == nil {
			x = &execTrack{started: true}
			s.execs[e.ExecID] = x
		}
		x.exited = true
	case runckit.EventPause:
		if s.paused {
			bad(5, "pause while paused")
		}
		s.paused = true
	case runckit.EventResume:
		if !s.paused {
			bad(5, "resume while not paused")
		}
		s.paused = false
	case runckit.EventOOM:
	case runckit.EventDelete:
		if !s.initExited {
			bad(4, "delete before init's exit: the exit is lost")
		} else if !sameStatus(e.Status, s.initStatus) {
			bad(4, "delete carries %v, init exited with %v", e.Status, s.initStatus)
		}
		for _, id := range sortedExecIDs(s.execs) {
			if x := s.execs[id]; x.started && !x.exited {
				bad(4, "delete while exec %q has no exit: the exit is lost", id)
			}
		}
		s.deleted = true
	default:
		bad(5, "unknown event kind %d", int(e.Kind))
	}
	return vs
}

// end reports what an ended stream lacks: a stream is complete once its
// container is deleted.
func (s *streamState) end() []violation {
	if s.events > 0 && !s.deleted {
		return []violation{{Rule: 3, What: fmt.Sprintf("stream of %d events never reached delete", s.events)}}
	}
	return nil
}

func sortedExecIDs(m map[string]*execTrack) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func sameStatus(a, b runckit.ExitStatus) bool {
	return a.Code == b.Code && a.Signal == b.Signal && a.Unknown == b.Unknown && a.ExitedAt.Equal(b.ExitedAt)
}

// checkStream is the checker as a pure function over one container's
// events. With complete set, a stream that does not end in delete is a
// violation too.
func checkStream(events []runckit.Event, complete bool) (vs []violation, duplicates int) {
	var s streamState
	for _, e := range events {
		vs = append(vs, s.feed(e)...)
	}
	if complete {
		vs = append(vs, s.end()...)
	}
	return vs, s.duplicates
}

type procKey struct{ container, exec string }

// eventChecker is an EventSink for any number of containers, safe for the
// concurrent calls a shared sink gets (one per container at a time).
type eventChecker struct {
	mu       sync.Mutex
	streams  map[string]*streamState
	expected map[procKey]runckit.ExitStatus
	events   int
	samples  []violation // the first few violations, for messages
	// byProc keeps each process's events, for messages about it.
	byProc map[procKey][]runckit.Event
}

func newEventChecker() *eventChecker {
	return &eventChecker{
		streams:  make(map[string]*streamState),
		expected: make(map[procKey]runckit.ExitStatus),
		byProc:   make(map[procKey][]runckit.Event),
	}
}

const maxViolationSamples = 20

// Send feeds e into its container's stream.
func (c *eventChecker) Send(e runckit.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[e.ContainerID]
	if s == nil {
		s = &streamState{}
		c.streams[e.ContainerID] = s
	}
	c.events++
	k := procKey{e.ContainerID, e.ExecID}
	c.byProc[k] = append(c.byProc[k], e)
	for _, v := range s.feed(e) {
		if len(c.samples) < maxViolationSamples {
			c.samples = append(c.samples, v)
		}
	}
}

// history returns the events delivered so far for one process ("" is init
// and the container).
func (c *eventChecker) history(containerID, execID string) []runckit.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]runckit.Event(nil), c.byProc[procKey{containerID, execID}]...)
}

// expectExit registers that a process exited with st, as Wait reported:
// its exit event must be delivered once, with that status.
func (c *eventChecker) expectExit(containerID, execID string, st runckit.ExitStatus) {
	c.mu.Lock()
	c.expected[procKey{containerID, execID}] = st
	c.mu.Unlock()
}

// checkReport sums up a checker's streams.
type checkReport struct {
	Containers int
	Events     int
	Exits      int
	Violations int // rules 1-5 broken, duplicates and unfinished streams included
	Duplicates int // exits delivered more than once
	Expected   int // exits the test registered
	Lost       int // registered exits never delivered
	Mismatched int // delivered exits whose status differs from Wait's
	Unexpected int // exec exits delivered that the test did not register
	Samples    []violation
}

func (r checkReport) String() string {
	return fmt.Sprintf("containers=%d events=%d exits=%d expected=%d violations=%d lost=%d duplicates=%d mismatched=%d unexpected=%d",
		r.Containers, r.Events, r.Exits, r.Expected, r.Violations, r.Lost, r.Duplicates, r.Mismatched, r.Unexpected)
}

// report checks the streams as they stand; with complete set, every stream
// must have reached its delete event. Unexpected counts only for
// containers with at least one registered exit.
func (c *eventChecker) report(complete bool) checkReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := checkReport{Containers: len(c.streams), Events: c.events, Expected: len(c.expected)}
	r.Samples = append(r.Samples, c.samples...)
	registered := make(map[string]bool)
	for k := range c.expected {
		registered[k.container] = true
	}
	ids := make([]string, 0, len(c.streams))
	for id := range c.streams {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		s := c.streams[id]
		r.Violations += s.violations
		r.Duplicates += s.duplicates
		if complete {
			for _, v := range s.end() {
				r.Violations++
				v.Event.ContainerID = id
				if len(r.Samples) < maxViolationSamples {
					r.Samples = append(r.Samples, v)
				}
			}
		}
		for execID, exits := range s.exits {
			r.Exits += len(exits)
			if _, ok := c.expected[procKey{id, execID}]; !ok && execID != "" && registered[id] {
				r.Unexpected += len(exits)
			}
		}
	}
	for k, st := range c.expected {
		var exits []runckit.Event
		if s := c.streams[k.container]; s != nil {
			exits = s.exits[k.exec]
		}
		if len(exits) == 0 {
			r.Lost++
			continue
		}
		if !sameStatus(exits[len(exits)-1].Status, st) {
			r.Mismatched++
			if len(r.Samples) < maxViolationSamples {
				r.Samples = append(r.Samples, violation{Rule: 4, Event: exits[len(exits)-1],
					What: fmt.Sprintf("exit event status differs from Wait's %v", st)})
			}
		}
	}
	return r
}

// TestEventCheckerRules runs the checker over hand-written streams, one per
// rule it enforces.
func TestEventCheckerRules(t *testing.T) {
	ev := func(kind runckit.EventKind, execID string, pid int) runckit.Event {
		return runckit.Event{Kind: kind, ContainerID: "c", ExecID: execID, Pid: pid}
	}
	const (
		create  = runckit.EventCreate
		start   = runckit.EventStart
		added   = runckit.EventExecAdded
		started = runckit.EventExecStarted
		exit    = runckit.EventExit
		del     = runckit.EventDelete
	)
	for _, tc := range []struct {
		name   string
		events []runckit.Event
		bad    int // violations expected
	}{
		{"whole life", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "x", 2), ev(exit, "", 1), ev(del, "", 1)}, 0},
		{"killed before start", []runckit.Event{ev(create, "", 1), ev(exit, "", 1), ev(del, "", 1)}, 0},
		{"exec ID reused after delete", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "x", 2), ev(added, "x", 0), ev(started, "x", 3), ev(exit, "x", 3), ev(exit, "", 1), ev(del, "", 1)}, 0},
		{"first not create", []runckit.Event{ev(start, "", 1), ev(exit, "", 1), ev(del, "", 1)}, 1},
		{"event after delete", []runckit.Event{ev(create, "", 1), ev(exit, "", 1), ev(del, "", 1), ev(runckit.EventOOM, "", 0)}, 1},
		{"exec exit before started", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(exit, "x", 2), ev(started, "x", 2), ev(exit, "", 1), ev(del, "", 1)}, 2},
		{"start after init exit", []runckit.Event{ev(create, "", 1), ev(exit, "", 1), ev(start, "", 1), ev(del, "", 1)}, 1},
		{"duplicate exit", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "x", 2), ev(exit, "x", 2), ev(exit, "", 1), ev(del, "", 1)}, 1},
		{"exec exit after init exit", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "", 1), ev(exit, "x", 2), ev(del, "", 1)}, 1},
		{"exec started after init exit", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(exit, "", 1), ev(started, "x", 2), ev(exit, "x", 2), ev(del, "", 1)}, 2},
		{"exit for the wrong pid", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "x", 3), ev(exit, "", 1), ev(del, "", 1)}, 1},
		{"lost exec exit", []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "", 1), ev(del, "", 1)}, 1},
		{"no delete", []runckit.Event{ev(create, "", 1), ev(exit, "", 1)}, 1},
	} {
		for i := range tc.events {
			tc.events[i].Seq = uint64(i + 1)
		}
		vs, _ := checkStream(tc.events, true)
		if len(vs) != tc.bad {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(vs), vs, tc.bad)
		}
	}

	// Expectations: a lost exit and a status that differs from Wait's.
	chk := newEventChecker()
	for i, e := range []runckit.Event{ev(create, "", 1), ev(start, "", 1), ev(added, "x", 0), ev(started, "x", 2), ev(exit, "x", 2), ev(exit, "", 1), ev(del, "", 1)} {
		e.Seq = uint64(i + 1)
		chk.Send(e)
	}
	chk.expectExit("c", "x", runckit.ExitStatus{Code: 3})
	chk.expectExit("c", "", runckit.ExitStatus{})
	chk.expectExit("c", "y", runckit.ExitStatus{})
	if r := chk.report(true); r.Violations != 0 || r.Lost != 1 || r.Mismatched != 1 {
		t.Errorf("report %v, want 0 violations, 1 lost, 1 mismatched", r)
	}
}
