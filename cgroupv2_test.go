package runckit_test

import (
	"bufio"
	"context"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// The tests and helpers here hold on both cgroup hierarchies: on this
// repository's hybrid host they run against v1, in the cgroup v2 lane
// (.ci/cgroup2) against a pure v2 hierarchy, with runc and with crun.

// unifiedCgroupDir returns pid's cgroup directory when the host runs a pure
// cgroup v2 hierarchy at /sys/fs/cgroup, and false on a v1 or hybrid host.
func unifiedCgroupDir(t *testing.T, pid int) (string, bool) {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		return "", false
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join("/sys/fs/cgroup", rest), true
		}
	}
	t.Fatalf("pid %d has no cgroup v2 line on a cgroup v2 host", pid)
	return "", false
}

// cgroupFile reads a file of pid's cgroup: v2file on a cgroup v2 host,
// else v1file of the v1 controller (skipping the test if there is none).
func cgroupFile(t *testing.T, pid int, controller, v1file, v2file string) string {
	t.Helper()
	dir, ok := unifiedCgroupDir(t, pid)
	if !ok {
		return v1CgroupFile(t, pid, controller, v1file)
	}
	data, err := os.ReadFile(filepath.Join(dir, v2file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// cgroupFrozen reports whether pid's cgroup is frozen: freezer.state on v1,
// the "frozen" line of cgroup.events on v2 (cgroup.freeze is only the
// request; cgroup.events says the kernel has done it).
func cgroupFrozen(t *testing.T, pid int) bool {
	t.Helper()
	events := cgroupFile(t, pid, "freezer", "freezer.state", "cgroup.events")
	if events == "FROZEN" {
		return true
	}
	for _, line := range strings.Split(events, "\n") {
		if line == "frozen 1" {
			return true
		}
	}
	return false
}

// cpuQuota returns the CFS quota and period of pid's cgroup: cpu.cfs_quota_us
// and cpu.cfs_period_us on v1, the two fields of cpu.max on v2 ("max" is no
// quota, as -1 is on v1).
func cpuQuota(t *testing.T, pid int) (quota, period string) {
	t.Helper()
	if _, ok := unifiedCgroupDir(t, pid); !ok {
		return v1CgroupFile(t, pid, "cpu", "cpu.cfs_quota_us"), v1CgroupFile(t, pid, "cpu", "cpu.cfs_period_us")
	}
	f := strings.Fields(cgroupFile(t, pid, "cpu", "", "cpu.max"))
	if len(f) != 2 {
		t.Fatalf("cpu.max = %q, want \"<quota> <period>\"", f)
	}
	if f[0] == "max" {
		f[0] = "-1"
	}
	return f[0], f[1]
}

// Stats reads the same on both hierarchies where the Stats doc says so: no
// pids limit is 0, no memory limit is the kernel's own huge value, and the
// figures match the cgroup's files.
func TestStatsLimitsAsDocumented(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	free := e.sleeper(ctx)
	pid := free.Init().Pid()
	st, err := free.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pids.Limit != 0 {
		t.Errorf("Pids.Limit = %d with no pids limit, want 0 (\"0 means no limit\")", st.Pids.Limit)
	}
	if st.Pids.Current != 1 {
		t.Errorf("Pids.Current = %d, want 1 (init alone)", st.Pids.Current)
	}
	_, unified := unifiedCgroupDir(t, pid)
	if unified && st.Memory.Limit != math.MaxUint64 {
		t.Errorf("Memory.Limit = %d with no memory limit on cgroup v2, want math.MaxUint64", st.Memory.Limit)
	}
	if !unified && st.Memory.Limit < 1<<62 {
		t.Errorf("Memory.Limit = %d with no memory limit on cgroup v1, want the kernel's huge value", st.Memory.Limit)
	}
	if st.Memory.Usage == 0 || st.Memory.MaxUsage < st.Memory.Usage && peakKept(t, pid) {
		t.Errorf("Memory = %+v: want usage > 0 and max usage >= usage", st.Memory)
	}

	limit, pids := int64(64<<20), int64(17)
	spec := runckittest.Spec(t, "sleep", "100000")
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, Pids: &specs.LinuxPids{Limit: &pids}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err = c.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Pids.Limit != uint64(pids) || st.Memory.Limit != uint64(limit) {
		t.Errorf("limits = pids %d, memory %d; want %d and %d", st.Pids.Limit, st.Memory.Limit, pids, limit)
	}
	if got := cgroupFile(t, c.Init().Pid(), "memory", "memory.limit_in_bytes", "memory.max"); got != strconv.FormatInt(limit, 10) {
		t.Errorf("memory limit file = %s, want %d", got, limit)
	}
}

// peakKept reports whether pid's cgroup keeps a memory high-water mark:
// always on v1, from Linux 5.19 (memory.peak) on v2.
func peakKept(t *testing.T, pid int) bool {
	dir, ok := unifiedCgroupDir(t, pid)
	if !ok {
		return true
	}
	_, err := os.Stat(filepath.Join(dir, "memory.peak"))
	return err == nil
}

// KillAll reaches every process of the container, not only init: a
// SIGTERM that init (a PID namespace's init without a handler) ignores
// still ends the exec, and SIGKILL then ends init too.
func TestKillAllReachesEveryProcess(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	p := runExec(t, ctx, c, "victim", "sleep", "100000")
	if err := c.Kill(ctx, syscall.SIGTERM, runckit.KillAll()); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil || st.Signal != syscall.SIGTERM {
		t.Fatalf("exec after KillAll(SIGTERM) = %v, %v; want killed by SIGTERM", st, err)
	}
	if s, _ := c.State(ctx); s.Status != runckit.StatusRunning {
		t.Errorf("init after SIGTERM = %s, want running (a namespace's init ignores it)", s.Status)
	}
	if err := c.Kill(ctx, syscall.SIGKILL, runckit.KillAll()); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("init after KillAll(SIGKILL) = %v, %v; want killed by SIGKILL", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != "create start exec-added:victim exec-started:victim exit:victim exit delete" {
		t.Errorf("events = %s", got)
	}
}

// SIGKILL to a paused container: cgroup v2's freezer lets a fatal signal
// through, so init dies while frozen and the container is stopped (Resume
// is then refused). The v1 freezer of kernels before its rewrite held it
// until Resume; this host's (6.18) lets it through too. Either way the
// exit is published once, after the pause, and Delete then works.
func TestKillPausedContainer(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	_, unified := unifiedCgroupDir(t, c.Init().Pid())
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Wait(waitCtx)
	want := "create start pause exit delete"
	switch {
	case err == nil:
		if st.Signal != syscall.SIGKILL {
			t.Fatalf("Wait = %v, want killed by SIGKILL", st)
		}
		if s, _ := c.State(ctx); s.Status != runckit.StatusStopped {
			t.Errorf("status = %s, want stopped", s.Status)
		}
		if err := c.Resume(ctx); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("Resume of a stopped container = %v, want ErrFailedPrecondition", err)
		}
	case unified:
		t.Fatalf("Wait after SIGKILL to a frozen cgroup v2 = %v; want killed at once", err)
	default:
		t.Logf("this v1 freezer holds SIGKILL until Resume")
		if err := c.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := c.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
			t.Fatalf("Wait after Resume = %v, %v; want killed by SIGKILL", st, err)
		}
		want = "create start pause resume exit delete"
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != want {
		t.Errorf("events = %s, want %s", got, want)
	}
}
