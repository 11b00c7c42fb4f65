package runckit_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/runckit/runckit"
)

// FuzzEventChecker feeds event sequences decoded from the input into the
// checker of eventcheck_test.go. In raw mode (first byte even) the events are
// anything at all: the checker must not panic, and the shared checker must
// agree with the pure per-container function. In valid mode (first byte odd)
// the bytes steer a model of up to three containers through legal lifecycles:
// the checker must find no violation and no lost exit, and must catch
// mutations that break a rule.
func FuzzEventChecker(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{0, 1, 0, 0, 1, 2, 0, 0, 1, 5, 0, 0, 1, 9, 0, 0, 1})
	f.Add([]byte{0, 5, 4, 1, 1, 5, 4, 1, 1, 9, 0, 0, 0})
	f.Add([]byte{1})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47, 51, 55, 59, 63})
	f.Add([]byte{1, 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96})
	f.Add([]byte("\x01the quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps over the lazy dog"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || data[0]%2 == 0 {
			fuzzRawEvents(t, data)
			return
		}
		fuzzValidEvents(t, data[1:])
	})
}

var fuzzContainers = []string{"c0", "c1", "c2"}

// fuzzRawEvents decodes 4 bytes per event: kind, container and exec, pid
// and status, and sequence number (contiguous unless the byte says not).
func fuzzRawEvents(t *testing.T, data []byte) {
	if len(data) > 0 {
		data = data[1:]
	}
	chk := newEventChecker()
	perContainer := make(map[string][]runckit.Event)
	seqs := make(map[string]uint64)
	base := time.Unix(1700000000, 0)
	for i := 0; i+4 <= len(data); i += 4 {
		b0, b1, b2, b3 := data[i], data[i+1], data[i+2], data[i+3]
		cid := fuzzContainers[int(b1)%len(fuzzContainers)]
		execID := ""
		if x := (b1 >> 2) % 4; x > 0 {
			execID = fmt.Sprintf("x%d", x)
		}
		seqs[cid]++
		seq := seqs[cid]
		if b3%8 == 0 {
			seq = uint64(b3 >> 3)
		}
		e := runckit.Event{
			Kind:        runckit.EventKind(int(b0) % 11),
			ContainerID: cid,
			ExecID:      execID,
			Pid:         100 + int(b2%4),
			Status:      runckit.ExitStatus{Code: int(b2 >> 2), ExitedAt: base.Add(time.Duration(b2>>2) * time.Second)},
			Seq:         seq,
		}
		perContainer[cid] = append(perContainer[cid], e)
		chk.Send(e)
		if b3%16 == 1 {
			chk.expectExit(cid, execID, e.Status)
		}
		_ = e.String()
	}
	r := chk.report(len(data)%2 == 0)
	want := 0
	for _, events := range perContainer {
		vs, _ := checkStream(events, len(data)%2 == 0)
		want += len(vs)
	}
	if r.Violations != want {
		t.Fatalf("shared checker counted %d violations, the per-container function %d", r.Violations, want)
	}
	if r.Lost+r.Mismatched > r.Expected {
		t.Fatalf("report %v: more lost and mismatched than expected exits", r)
	}
	_ = r.String()
}

// lifeModel is a container as the generator sees it.
type lifeModel struct {
	id          string
	seq         uint64
	created     bool
	started     bool // init's start event is out
	reaped      bool // init has exited; its exit event may be held back
	exitOut     bool // init's exit event is out
	deleted     bool
	paused      bool
	initPid     int
	initStatus  runckit.ExitStatus
	execs       map[string]*execModel
	execCounter int
	events      []runckit.Event
}

type execModel struct {
	state string // added, starting, running, exited
	pid   int
}

type generator struct {
	data   []byte
	pos    int
	pid    int
	clock  time.Time
	chk    *eventChecker
	models []*lifeModel
	all    []runckit.Event
}

func (g *generator) next() (byte, bool) {
	if g.pos >= len(g.data) {
		return 0, false
	}
	b := g.data[g.pos]
	g.pos++
	return b, true
}

func (g *generator) emit(m *lifeModel, e runckit.Event) {
	m.seq++
	e.Seq = m.seq
	e.ContainerID = m.id
	g.clock = g.clock.Add(time.Millisecond)
	e.Time = g.clock
	m.events = append(m.events, e)
	g.all = append(g.all, e)
	g.chk.Send(e)
}

func (g *generator) status(b byte) runckit.ExitStatus {
	g.clock = g.clock.Add(time.Millisecond)
	if b%3 == 0 {
		sig := syscall.Signal(1 + b%15)
		return runckit.ExitStatus{Code: 128 + int(sig), Signal: sig, ExitedAt: g.clock}
	}
	return runckit.ExitStatus{Code: int(b), ExitedAt: g.clock}
}

func (g *generator) activeExecs(m *lifeModel) int {
	n := 0
	for _, x := range m.execs {
		if x.state == "starting" || x.state == "running" {
			n++
		}
	}
	return n
}

// maybeInitExit publishes init's exit once it was reaped and no exec is
// starting or running (DESIGN.md rule 2).
func (g *generator) maybeInitExit(m *lifeModel) {
	if m.reaped && !m.exitOut && g.activeExecs(m) == 0 {
		m.exitOut = true
		g.emit(m, runckit.Event{Kind: runckit.EventExit, Pid: m.initPid, Status: m.initStatus})
		g.chk.expectExit(m.id, "", m.initStatus)
	}
}

// step performs one legal action on m chosen by b.
func (g *generator) step(m *lifeModel, b byte) {
	if !m.created {
		g.pid++
		m.created, m.initPid = true, g.pid
		g.emit(m, runckit.Event{Kind: runckit.EventCreate, Pid: m.initPid})
		return
	}
	ids := sortedModelIDs(m.execs)
	var actions []func()
	add := func(f func()) { actions = append(actions, f) }
	if !m.reaped {
		add(func() { // a new exec, or an ID freed by Process.Delete
			m.execCounter++
			id := fmt.Sprintf("e%d", m.execCounter%5)
			if x := m.execs[id]; x != nil && x.state != "exited" && x.state != "added" {
				return
			}
			m.execs[id] = &execModel{state: "added"}
			g.emit(m, runckit.Event{Kind: runckit.EventExecAdded, ExecID: id})
		})
		add(func() { // init dies: killed before start, or exits
			m.reaped, m.initStatus = true, g.status(b>>2)
			g.maybeInitExit(m)
		})
		add(func() { g.emit(m, runckit.Event{Kind: runckit.EventOOM}) })
	}
	if !m.started && !m.reaped {
		add(func() {
			m.started = true
			g.emit(m, runckit.Event{Kind: runckit.EventStart, Pid: m.initPid})
		})
	}
	if m.started && !m.reaped {
		add(func() {
			if m.paused {
				g.emit(m, runckit.Event{Kind: runckit.EventResume})
			} else {
				g.emit(m, runckit.Event{Kind: runckit.EventPause})
			}
			m.paused = !m.paused
		})
	}
	for _, id := range ids {
		x := m.execs[id]
		switch x.state {
		case "added":
			if m.started && !m.reaped && !m.paused {
				add(func() { x.state = "starting" })
			}
		case "starting": // runc exec returns: the exec runs, or its start failed
			add(func() {
				g.pid++
				x.state, x.pid = "running", g.pid
				g.emit(m, runckit.Event{Kind: runckit.EventExecStarted, ExecID: id, Pid: x.pid})
			})
			add(func() {
				x.state = "added"
				g.maybeInitExit(m)
			})
		case "running":
			add(func() {
				x.state = "exited"
				st := g.status(b >> 3)
				g.emit(m, runckit.Event{Kind: runckit.EventExit, ExecID: id, Pid: x.pid, Status: st})
				g.chk.expectExit(m.id, id, st)
				g.maybeInitExit(m)
			})
		}
	}
	if m.exitOut {
		add(func() {
			m.deleted = true
			g.emit(m, runckit.Event{Kind: runckit.EventDelete, Pid: m.initPid, Status: m.initStatus})
		})
	}
	actions[int(b)%len(actions)]()
}

func sortedModelIDs(m map[string]*execModel) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	return ids
}

// generateValid runs the model over data and returns the generator, whose
// checker has been fed every event.
func generateValid(data []byte) *generator {
	g := &generator{data: data, clock: time.Unix(1700000000, 0), chk: newEventChecker()}
	for _, id := range fuzzContainers {
		g.models = append(g.models, &lifeModel{id: id, execs: make(map[string]*execModel)})
	}
	for {
		b, ok := g.next()
		if !ok {
			break
		}
		m := g.models[int(b)%len(g.models)]
		if m.deleted {
			continue
		}
		a, ok := g.next()
		if !ok {
			break
		}
		g.step(m, a)
	}
	return g
}

func fuzzValidEvents(t *testing.T, data []byte) {
	g := generateValid(data)
	r := g.chk.report(false)
	if r.Violations != 0 || r.Lost != 0 || r.Mismatched != 0 || r.Duplicates != 0 {
		t.Fatalf("valid sequence flagged: %v\nsamples: %v\nevents:\n%s", r, r.Samples, eventLines(g.all))
	}
	for _, m := range g.models {
		if vs, _ := checkStream(m.events, m.deleted); len(vs) != 0 {
			t.Fatalf("valid stream of %s flagged: %v\n%s", m.id, vs, eventLines(m.events))
		}
		if !m.deleted {
			continue
		}
		checkMutationsCaught(t, m.events)
	}
}

// checkMutationsCaught breaks a complete valid stream in ways each of which
// violates a rule, and checks that the checker notices every one.
func checkMutationsCaught(t *testing.T, events []runckit.Event) {
	t.Helper()
	renumber := func(es []runckit.Event) []runckit.Event {
		out := make([]runckit.Event, len(es))
		for i, e := range es {
			e.Seq = uint64(i + 1)
			out[i] = e
		}
		return out
	}
	clone := func() []runckit.Event { return append([]runckit.Event(nil), events...) }
	mutations := map[string][]runckit.Event{
		"first event dropped":  renumber(events[1:]),
		"last event dropped":   events[:len(events)-1],
		"event after delete":   append(clone(), runckit.Event{Kind: runckit.EventOOM, ContainerID: events[0].ContainerID, Seq: uint64(len(events) + 1)}),
		"seq gap":              append(clone()[:len(events)-1], withSeq(events[len(events)-1], uint64(len(events)+1))),
		"create after create":  renumber(append([]runckit.Event{events[0]}, events...)),
		"delete moved earlier": nil,
	}
	if len(events) > 2 {
		es := clone()
		del := es[len(es)-1]
		es = append([]runckit.Event{es[0], del}, es[1:len(es)-1]...)
		mutations["delete moved earlier"] = renumber(es)
	} else {
		delete(mutations, "delete moved earlier")
	}
	for i, e := range events {
		if e.Kind != runckit.EventExit {
			continue
		}
		es := clone()
		es = append(es[:i+1], append([]runckit.Event{e}, es[i+1:]...)...)
		mutations["exit duplicated"] = renumber(es)
		if e.ExecID != "" {
			// The exec's exit moved before its exec-started.
			for j := i - 1; j >= 0; j-- {
				if events[j].Kind == runckit.EventExecStarted && events[j].ExecID == e.ExecID {
					es := clone()
					es[i], es[j] = es[j], es[i]
					mutations["exec exit before exec-started"] = renumber(es)
					break
				}
			}
			// Another exit moved after init's: an exec exit after init's exit.
			for j := i + 1; j < len(events); j++ {
				if events[j].Kind == runckit.EventExit && events[j].ExecID == "" {
					es := clone()
					moved := es[i]
					es = append(es[:i], es[i+1:]...)
					es = append(es[:j], append([]runckit.Event{moved}, es[j:]...)...)
					mutations["exec exit after init exit"] = renumber(es)
					break
				}
			}
			other := e
			other.Pid += 100000
			es = clone()
			es[i] = other
			mutations["exit with another pid"] = es
		}
		break
	}
	for name, es := range mutations {
		vs, dups := checkStream(es, true)
		if len(vs) == 0 {
			t.Fatalf("mutation %q not caught:\n%s", name, eventLines(es))
		}
		if name == "exit duplicated" && dups == 0 {
			t.Fatalf("duplicated exit not counted as a duplicate: %v", vs)
		}
	}
}

func withSeq(e runckit.Event, seq uint64) runckit.Event {
	e.Seq = seq
	return e
}

func eventLines(events []runckit.Event) string {
	s := ""
	for _, e := range events {
		s += "  " + e.String() + "\n"
	}
	return s
}
