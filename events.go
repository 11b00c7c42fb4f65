package runckit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/runckit/runckit/internal/phase"
)

// EventKind says what happened to a container or process.
type EventKind int

// The event kinds, in the order they can first occur for a container.
const (
	EventCreate      EventKind = iota + 1 // runc create succeeded: init exists, not yet running
	EventStart                            // init is running
	EventExecAdded                        // an exec process was reserved with Container.Exec
	EventExecStarted                      // an exec process is running
	EventExit                             // a process exited; Status says how
	EventPause                            // the container's processes were frozen
	EventResume                           // the container's processes were thawed
	EventOOM                              // the OOM killer ended a process of the container's cgroup (before init's exit and the victim's)
	EventDelete                           // the container was deleted; always the last event
)

var eventKindNames = map[EventKind]string{
	EventCreate:      "create",
	EventStart:       "start",
	EventExecAdded:   "exec-added",
	EventExecStarted: "exec-started",
	EventExit:        "exit",
	EventPause:       "pause",
	EventResume:      "resume",
	EventOOM:         "oom",
	EventDelete:      "delete",
}

func (k EventKind) String() string {
	if s, ok := eventKindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one entry of a container's ordered lifecycle stream.
type Event struct {
	Kind        EventKind
	ContainerID string
	ExecID      string     // "" for the init process and container-wide events
	Pid         int        // the process's host pid, 0 where none applies
	Status      ExitStatus // set for EventExit and EventDelete
	Time        time.Time  // when runckit observed the event
	// Seq numbers a container's events 1, 2, 3... in delivery order.
	Seq uint64
}

func (e Event) String() string {
	s := fmt.Sprintf("#%d %s %s", e.Seq, e.Kind, e.ContainerID)
	if e.ExecID != "" {
		s += "/" + e.ExecID
	}
	if e.Pid != 0 {
		s += fmt.Sprintf(" pid=%d", e.Pid)
	}
	if e.Kind == EventExit || e.Kind == EventDelete {
		s += " " + e.Status.String()
	}
	return s
}

// EventSink receives a container's events. Runckit calls Send from one
// goroutine at a time per container, in Seq order, and never from inside an
// operation: a slow Send delays later events of that container, nothing else.
// (An exit event goes to Send straight from runckit's exit watcher when the
// container has no delivery under way; if Send takes longer than about a
// millisecond, the watcher moves to a new goroutine and other processes'
// exits go on.)
// A sink shared by several containers is called concurrently, once per
// container; it must then be safe for concurrent use. Send must not call
// Delete or Flush of the container whose event it handles: both wait for
// the sink to drain, which can not happen while Send runs.
type EventSink interface {
	Send(Event)
}

// EventSinkFunc adapts a function to EventSink.
type EventSinkFunc func(Event)

// Send calls f(e).
func (f EventSinkFunc) Send(e Event) { f(e) }

type discardSink struct{}

func (discardSink) Send(Event) {}

// eventQueue delivers one container's events to its sink in order. Publishing
// appends to an unbounded in-memory queue and never blocks; a delivery
// goroutine exists only while the queue is non-empty, so an idle container
// costs no goroutine. An exit handler may hold the queue while it publishes
// and then deliver on its own goroutine (hold, release): an exit reaches the
// sink without waiting for a new goroutine to be scheduled.
type eventQueue struct {
	sink EventSink

	mu      sync.Mutex // guards the fields below
	pending []Event
	seq     uint64
	running bool          // a delivery goroutine, or the holder on release, drains pending
	holds   int           // while > 0, publications start no goroutine: a holder delivers on release
	owed    bool          // work arrived while held: the next release drains pending
	closed  bool          // no more events will be accepted
	idle    chan struct{} // closed when pending drains; replaced when work arrives
}

func newEventQueue(sink EventSink) *eventQueue {
	return newEventQueueAfter(sink, 0)
}

// newEventQueueAfter is newEventQueue numbering from lastSeq+1: an adopted
// container continues the sequence of the run that made it.
func newEventQueueAfter(sink EventSink, lastSeq uint64) *eventQueue {
	if sink == nil {
		sink = discardSink{}
	}
	idle := make(chan struct{})
	close(idle)
	return &eventQueue{sink: sink, idle: idle, seq: lastSeq}
}

// lastSeq is the Seq of the last event handed to the queue; safe on nil.
func (q *eventQueue) lastSeq() uint64 {
	if q == nil {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.seq
}

// publish stamps e with the next sequence number and queues it. It reports
// false, and drops e, once the queue has been closed: the delete event is
// always the last one.
func (q *eventQueue) publish(e Event) bool {
	defer phase.End(phase.Publish, phase.Begin())
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.seq++
	e.Seq = q.seq
	q.pending = append(q.pending, e)
	if !q.running {
		q.running = true
		q.idle = make(chan struct{})
		if q.holds > 0 {
			q.owed = true
		} else {
			go q.deliver()
		}
	}
	return true
}

// hold makes publications queue without starting a delivery goroutine until
// release. The caller must call release.
func (q *eventQueue) hold() {
	q.mu.Lock()
	q.holds++
	q.mu.Unlock()
}

// release ends a hold. If events arrived during a hold and no delivery
// was under way, release delivers them, and any that follow, on the
// calling goroutine until the queue is empty. The caller must hold no lock
// a sink or a publisher could need.
func (q *eventQueue) release() {
	q.mu.Lock()
	q.holds--
	owed := q.owed
	q.owed = false
	q.mu.Unlock()
	if owed {
		q.deliver()
	}
}

func (q *eventQueue) deliver() {
	for {
		q.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.running = false
			close(q.idle)
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		t := phase.Begin()
		for _, e := range batch {
			q.sink.Send(e)
		}
		phase.End(phase.Deliver, t)
	}
}

// close stops the queue from accepting events; what is queued is still
// delivered.
func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
}

// flush waits until every event published so far has been handed to the sink,
// or ctx is done.
func (q *eventQueue) flush(ctx context.Context) error {
	q.mu.Lock()
	idle := q.idle
	q.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("runckit: waiting for the event sink: %w", ctx.Err())
	}
}
