package runckit_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

func TestPauseResume(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	if err := c.Resume(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resume of a running container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.State(ctx); st.Status != runckit.StatusPaused {
		t.Errorf("status = %s, want paused", st.Status)
	}
	if !cgroupFrozen(t, c.Init().Pid()) {
		t.Errorf("cgroup of a paused container is not frozen")
	}
	if err := c.Pause(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Pause = %v, want ErrFailedPrecondition", err)
	}
	if _, err := c.Exec(ctx, "frozen", runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Exec in a paused container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.State(ctx); st.Status != runckit.StatusRunning {
		t.Errorf("status = %s, want running", st.Status)
	}
	p := runExec(t, ctx, c, "thawed", "true")
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Errorf("exec after resume = %v, %v", st, err)
	}
	if _, err := c.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Pause of a stopped container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != "create start pause resume exec-added:thawed exec-started:thawed exit:thawed exit delete" {
		t.Errorf("events = %s", got)
	}
}

// v1CgroupFile reads a file of pid's cgroup in a v1 controller.
func v1CgroupFile(t *testing.T, pid int, controller, file string) string {
	t.Helper()
	f, err := os.Open("/proc/" + itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, parts[2], file))
				if err != nil {
					t.Fatal(err)
				}
				return strings.TrimSpace(string(data))
			}
		}
	}
	t.Skipf("no v1 %s controller for pid %d: this host is not cgroup v1/hybrid", controller, pid)
	return ""
}

func TestUpdateAppliesLimits(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	mem, quota, period, pids := int64(64<<20), int64(50000), uint64(100000), int64(42)
	err := c.Update(ctx, &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Pids:   &specs.LinuxPids{Limit: &pids},
	})
	if err != nil {
		t.Fatal(err)
	}
	pid := c.Init().Pid()
	for _, check := range []struct{ controller, v1file, v2file, want string }{
		{"memory", "memory.limit_in_bytes", "memory.max", "67108864"},
		{"pids", "pids.max", "pids.max", "42"},
	} {
		if got := cgroupFile(t, pid, check.controller, check.v1file, check.v2file); got != check.want {
			t.Errorf("%s = %s, want %s", check.v1file, got, check.want)
		}
	}
	if q, p := cpuQuota(t, pid); q != "50000" || p != "100000" {
		t.Errorf("CPU quota and period = %s, %s; want 50000, 100000", q, p)
	}
}

func TestUpdateRefusesInvalidResources(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	before, _ := cpuQuota(t, c.Init().Pid())
	neg, lowQuota, tinyPeriod, negPids := int64(-5), int64(999), uint64(10), int64(-2)
	for name, r := range map[string]*specs.LinuxResources{
		"nil":             nil,
		"negative memory": {Memory: &specs.LinuxMemory{Limit: &neg}},
		"quota below min": {CPU: &specs.LinuxCPU{Quota: &lowQuota}},
		"tiny period":     {CPU: &specs.LinuxCPU{Period: &tinyPeriod}},
		"negative pids":   {Pids: &specs.LinuxPids{Limit: &negPids}},
	} {
		if err := c.Update(ctx, r); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: Update = %v, want ErrInvalidArgument", name, err)
		}
	}
	if after, _ := cpuQuota(t, c.Init().Pid()); after != before {
		t.Errorf("CPU quota changed from %s to %s by refused updates", before, after)
	}
}

func TestPidsTagsExecs(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	p := runExec(t, ctx, c, "sleeper", "sleep", "100000")
	infos, err := c.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[int]string{}
	for _, in := range infos {
		found[in.Pid] = in.ExecID
	}
	if id, ok := found[p.Pid()]; !ok || id != "sleeper" {
		t.Errorf("Pids = %+v, want pid %d tagged sleeper", infos, p.Pid())
	}
	if id, ok := found[c.Init().Pid()]; !ok || id != "" {
		t.Errorf("Pids = %+v, want init pid %d untagged", infos, c.Init().Pid())
	}
}

// A process that ignores SIGTERM is stopped with SIGKILL after about the
// grace period.
func TestStopEscalatesAfterGrace(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the trap be set
	const grace = 500 * time.Millisecond
	start := time.Now()
	st, err := c.Stop(ctx, grace)
	took := time.Since(start)
	if err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("Stop = %v, %v; want killed by SIGKILL", st, err)
	}
	t.Logf("Stop took %v with a %v grace period", took, grace)

	// A cooperative process exits on the stop signal from the annotation.
	spec := runckittest.Spec(t, "sh", "-c", "trap 'exit 9' USR1; while :; do sleep 0.05; done")
	spec.Annotations = map[string]string{runckit.StopSignalAnnotation: "SIGUSR1"}
	d := e.create(ctx, spec)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if st, err := d.Stop(ctx, 10*time.Second); err != nil || st.Code != 9 {
		t.Errorf("Stop with SIGUSR1 = %v, %v; want exit code 9", st, err)
	}
}
