package main

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/runckit/runckit/internal/phase"
)

// phaseTimes maps a phase to milliseconds: a run's totals, or per
// lifecycle after perLifecycle.
type phaseTimes map[string]float64

// API-level phases the bench times itself around runckit's calls, beside
// the library's own (internal/phase).
const (
	apiNew    = "NewContainer"
	apiStart  = "Start"
	apiWait   = "Wait"
	apiDelete = "Delete"
)

// Floor phases, timed around go-runc's calls.
const (
	flCreate  = "runc-create"
	flPidFile = "pid-file"
	flStart   = "runc-start"
	flWait    = "wait"
	flDelete  = "runc-delete"
)

// phaseRecorder sums durations per phase from many goroutines.
type phaseRecorder struct {
	lib [phase.NumPhases]atomic.Int64
	api map[string]*atomic.Int64 // fixed keys, made up front
}

func newPhaseRecorder(keys ...string) *phaseRecorder {
	r := &phaseRecorder{api: make(map[string]*atomic.Int64)}
	for _, k := range keys {
		r.api[k] = new(atomic.Int64)
	}
	return r
}

// hook is the internal/phase hook.
func (r *phaseRecorder) hook(p phase.Phase, d time.Duration) { r.lib[p].Add(int64(d)) }

// since adds the time since t0 to API phase key.
func (r *phaseRecorder) since(key string, t0 time.Time) { r.api[key].Add(int64(time.Since(t0))) }

func (r *phaseRecorder) times() phaseTimes {
	out := make(phaseTimes)
	for p := phase.Phase(0); p < phase.NumPhases; p++ {
		if v := r.lib[p].Load(); v > 0 {
			out[p.String()] = float64(v) / float64(time.Millisecond)
		}
	}
	for k, v := range r.api {
		out[k] = float64(v.Load()) / float64(time.Millisecond)
	}
	return out
}

// perLifecycle divides totals by the n lifecycles they came from.
func (t phaseTimes) perLifecycle(n int) phaseTimes {
	out := make(phaseTimes, len(t))
	for k, v := range t {
		out[k] = v / float64(n)
	}
	return out
}

// own is runckit's own work: the library phases that are not runc
// invocations, without sink delivery (the caller's code, on a goroutine of
// its own).
func (t phaseTimes) own() float64 {
	var sum float64
	for p := phase.Phase(0); p < phase.NumPhases; p++ {
		if p.IsRunc() || p == phase.Deliver {
			continue
		}
		sum += t[p.String()]
	}
	return sum
}

// ms is the record's form of t; for runckit it adds "own".
func (t phaseTimes) ms(runckit bool) map[string]float64 {
	if len(t) == 0 {
		return nil
	}
	out := make(map[string]float64, len(t)+1)
	for k, v := range t {
		out[k] = round3(v)
	}
	if runckit {
		out["own"] = round3(t.own())
	}
	return out
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

// medianPhases is the per-phase median over rounds.
func medianPhases(ts []phaseTimes) phaseTimes {
	keys := map[string]bool{}
	for _, t := range ts {
		for k := range t {
			keys[k] = true
		}
	}
	out := make(phaseTimes)
	for k := range keys {
		var vs []float64
		for _, t := range ts {
			vs = append(vs, t[k])
		}
		out[k] = medianFloat(vs)
	}
	return out
}

// phaseOrder lists a record's phases for display: API phases first, then
// the library's in lifecycle order, then the rest sorted.
func phaseOrder(m map[string]float64) []string {
	var order []string
	seen := map[string]bool{}
	add := func(k string) {
		if _, ok := m[k]; ok && !seen[k] {
			order = append(order, k)
			seen[k] = true
		}
	}
	for _, k := range []string{apiNew, apiStart, apiWait, apiDelete, flCreate, flPidFile, flStart, flWait, flDelete} {
		add(k)
	}
	for p := phase.Phase(0); p < phase.NumPhases; p++ {
		add(p.String())
	}
	var rest []string
	for k := range m {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(order, rest...)
}
