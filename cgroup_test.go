package runckit_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

func TestStatsV1(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100000")
	limit := int64(256 << 20)
	pids := int64(100)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, Pids: &specs.LinuxPids{Limit: &pids}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let it burn some CPU
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU.UsageNanos == 0 {
		t.Errorf("CPU usage is 0 after a busy loop: %+v", st.CPU)
	}
	if st.Memory.Usage == 0 || st.Memory.Limit != uint64(limit) {
		t.Errorf("memory = %+v, want usage > 0 and limit %d", st.Memory, limit)
	}
	if st.Pids.Current < 1 || st.Pids.Limit != uint64(pids) {
		t.Errorf("pids = %+v, want current >= 1 and limit %d", st.Pids, pids)
	}
	// Raw has what containerd's metrics carry beyond Stats, in the type
	// of the host's cgroup version.
	switch raw := st.Raw.(type) {
	case *v1stats.Metrics:
		if cgroups.Mode() == cgroups.Unified {
			t.Errorf("Raw is v1 metrics on a unified host")
		}
		if raw.GetMemory().GetHierarchicalMemoryLimit() != uint64(limit) || len(raw.GetCPU().GetUsage().GetPerCPU()) == 0 {
			t.Errorf("Raw: hierarchical_memory_limit %d, per-CPU %v; want %d and one figure per CPU",
				raw.GetMemory().GetHierarchicalMemoryLimit(), raw.GetCPU().GetUsage().GetPerCPU(), limit)
		}
	case *v2stats.Metrics:
		if cgroups.Mode() != cgroups.Unified {
			t.Errorf("Raw is v2 metrics on a host in mode %v", cgroups.Mode())
		}
		if raw.GetMemory().GetUsageLimit() != uint64(limit) || raw.GetMemory().GetPgfault() == 0 {
			t.Errorf("Raw: memory limit %d, pgfault %d; want %d and > 0", raw.GetMemory().GetUsageLimit(), raw.GetMemory().GetPgfault(), limit)
		}
	default:
		t.Errorf("Raw is %T; want containerd's cgroups metrics", st.Raw)
	}
}

// A container limited to 32 MiB that allocates far more is OOM-killed: the
// oom event comes, and before init's exit event.
func TestOOMEventBeforeInitExit(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	// awk doubles a string until the memory cgroup's limit stops it.
	spec := runckittest.Spec(t, "awk", `BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; print length(s) }`)
	limit := int64(32 << 20)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != syscall.SIGKILL {
		t.Errorf("init = %v, want killed by the OOM killer", st)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != "create start oom exit delete" {
		t.Errorf("events = %s, want create start oom exit delete", got)
	}
}

// An OOM kill of an exec, with init alive, is announced by the cgroup's
// notifier (eventfd on v1, inotify on v2), not only at init's exit.
func TestOOMNotifierWhileInitLives(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sleep", "100000")
	limit := int64(32 << 20)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The victim is a child of the exec, which runckit does not track: only
	// the notifier can tell.
	runExec(t, ctx, c, "hog", "sh", "-c", `awk 'BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; print length(s) }'; sleep 100000`)
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := e.rec.WaitFor(waitCtx, func(ev runckit.Event) bool { return ev.Kind == runckit.EventOOM }); err != nil {
		t.Fatalf("no oom event while init lives: %v (events %s)", err, kinds(e.rec.Events()))
	}
	if st, _ := c.State(ctx); st.Status != runckit.StatusRunning {
		t.Errorf("init status = %s, want running", st.Status)
	}
}

// An exec that the OOM killer takes has its oom event published before its
// exit event, like init's; and an exec runckit SIGKILLs itself, with no OOM
// about, exits with no oom event. The second is the fast path that skips the
// kill counter (exits.go, oomMayExplainLocked); the first shows the skip is
// not taken for a SIGKILL runckit did not send.
func TestOOMEventBeforeExecExit(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sleep", "100000")
	limit := int64(32 << 20)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	killed := runExec(t, ctx, c, "killed", "sleep", "100000")
	if err := killed.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := killed.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("killed exec = %v, %v; want SIGKILL", st, err)
	}
	hog := runExec(t, ctx, c, "hog", "awk", `BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; print length(s) }`)
	if st, err := hog.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("hog = %v, %v; want killed by the OOM killer", st, err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	want := "create start exec-added:killed exec-started:killed exit:killed exec-added:hog exec-started:hog oom exit:hog exit delete"
	if got := kinds(e.rec.Events()); got != want {
		t.Errorf("events =\n%s\nwant\n%s", got, want)
	}
}
