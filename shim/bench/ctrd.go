package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// shimSide drives one runtime (a shim) through containerd's Go client, the
// way a containerd user does: NewContainer with a snapshot of the image,
// NewTask with no stdio, Wait before Start.
type shimSide struct {
	name    string // "stock" or "runckit"
	runtime string // runtime type
	client  *containerd.Client
	image   containerd.Image
	opts    *options.Options // runc root under the run's temp dir

	burstC containerd.Container
	burstT containerd.Task
	burstP *specs.Process

	mu    sync.Mutex
	steps []lcSteps // per lifecycle run, mean per container
}

func (s *shimSide) newContainer(ctx context.Context, id string, annotations map[string]string, args ...string) (containerd.Container, error) {
	specOpts := []oci.SpecOpts{oci.WithImageConfig(s.image), oci.WithProcessArgs(args...)}
	if len(annotations) > 0 {
		specOpts = append(specOpts, oci.WithAnnotations(annotations))
	}
	return s.client.NewContainer(ctx, id,
		containerd.WithImage(s.image),
		containerd.WithNewSnapshot(id, s.image),
		containerd.WithRuntime(s.runtime, s.opts),
		containerd.WithNewSpec(specOpts...))
}

// startSleeper creates and starts a `sleep` container.
func (s *shimSide) startSleeper(ctx context.Context, id string, annotations map[string]string) (containerd.Container, containerd.Task, error) {
	c, err := s.newContainer(ctx, id, annotations, "sleep", "100000")
	if err != nil {
		return nil, nil, err
	}
	t, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		_ = c.Delete(ctx, containerd.WithSnapshotCleanup)
		return nil, nil, err
	}
	if err := t.Start(ctx); err != nil {
		_, _ = t.Delete(ctx, containerd.WithProcessKill)
		_ = c.Delete(ctx, containerd.WithSnapshotCleanup)
		return nil, nil, err
	}
	return c, t, nil
}

// killDelete kills a task, waits for it and deletes it with its container.
func killDelete(ctx context.Context, c containerd.Container, t containerd.Task) error {
	var errs []error
	if t != nil {
		ch, err := t.Wait(ctx)
		if err == nil {
			if err := t.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("kill %s: %w", c.ID(), err))
			}
			select {
			case <-ch:
			case <-time.After(30 * time.Second):
				errs = append(errs, fmt.Errorf("task %s did not exit in 30s after SIGKILL", c.ID()))
			}
		}
		if _, err := t.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete task %s: %w", c.ID(), err))
		}
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete container %s: %w", c.ID(), err))
	}
	return errors.Join(errs...)
}

func (s *shimSide) setupBurst(ctx context.Context) error {
	c, t, err := s.startSleeper(ctx, "burst-"+s.name, nil)
	if err != nil {
		return err
	}
	s.burstC, s.burstT = c, t
	spec, err := c.Spec(ctx)
	if err != nil {
		return err
	}
	p := *spec.Process
	p.Args = []string{"true"}
	s.burstP = &p
	return nil
}

// burstAlive checks that the burst task still runs, so that a dead init is
// reported as such rather than as N failed execs.
func (s *shimSide) burstAlive(ctx context.Context) error {
	st, err := s.burstT.Status(ctx)
	if err != nil {
		return fmt.Errorf("%s burst task: %w", s.name, err)
	}
	if st.Status != containerd.Running {
		return fmt.Errorf("%s burst task (pid %d) is %s, exit status %d at %v; want running",
			s.name, s.burstT.Pid(), st.Status, st.ExitStatus, st.ExitTime)
	}
	return nil
}

func (s *shimSide) teardownBurst(ctx context.Context) error {
	if s.burstC == nil {
		return nil
	}
	err := killDelete(ctx, s.burstC, s.burstT)
	s.burstC, s.burstT = nil, nil
	return err
}

// burst: per exec, task.Exec, process.Wait, Start, and the exit status.
// The time is until every exec has exited; the exec deletes follow, untimed.
func (s *shimSide) burst(ctx context.Context, round, n int) (time.Duration, error) {
	procs := make([]containerd.Process, n)
	d, err := gatedBurst(n, func(i int) error {
		p, err := s.burstT.Exec(ctx, fmt.Sprintf("b%d-%d-%d", round, n, i), s.burstP, cio.NullIO)
		if err != nil {
			return err
		}
		procs[i] = p
		ch, err := p.Wait(ctx)
		if err != nil {
			return err
		}
		if err := p.Start(ctx); err != nil {
			return err
		}
		st := <-ch
		if code, _, err := st.Result(); err != nil || code != 0 {
			return fmt.Errorf("exec %s: status %d, %v", p.ID(), code, err)
		}
		return nil
	})
	var mu sync.Mutex
	_ = parallelDo(ctx, n, 16, func(i int) error {
		if procs[i] == nil {
			return nil
		}
		if _, derr := procs[i].Delete(ctx); derr != nil {
			mu.Lock()
			err = errors.Join(err, derr)
			mu.Unlock()
		}
		return nil
	})
	return d, err
}

// lifecycle: per container NewContainer (snapshot, spec), NewTask, Wait,
// Start, the exit status, task Delete, container Delete with its snapshot.
func (s *shimSide) lifecycle(ctx context.Context, round, n, width int) (time.Duration, error) {
	var steps lcSteps
	t0 := time.Now()
	err := parallelDo(ctx, n, width, func(i int) error {
		id := fmt.Sprintf("lc%d-w%d-%s-%d", round, width, s.name, i)
		var st lcSteps
		mark := time.Now()
		lap := func(d *time.Duration) {
			now := time.Now()
			*d += now.Sub(mark)
			mark = now
		}
		c, err := s.newContainer(ctx, id, nil, "true")
		if err != nil {
			return err
		}
		lap(&st.NewContainer)
		t, err := c.NewTask(ctx, cio.NullIO)
		if err != nil {
			_ = c.Delete(ctx, containerd.WithSnapshotCleanup)
			return err
		}
		lap(&st.NewTask)
		ch, err := t.Wait(ctx)
		if err != nil {
			_ = killDelete(ctx, c, t)
			return err
		}
		if err := t.Start(ctx); err != nil {
			_ = killDelete(ctx, c, t)
			return err
		}
		lap(&st.Start)
		es := <-ch
		if code, _, err := es.Result(); err != nil || code != 0 {
			_ = killDelete(ctx, c, t)
			return fmt.Errorf("container %s: status %d, %v", id, code, err)
		}
		lap(&st.Exit)
		if _, err := t.Delete(ctx); err != nil {
			return fmt.Errorf("delete task %s: %w", id, err)
		}
		lap(&st.TaskDelete)
		err = c.Delete(ctx, containerd.WithSnapshotCleanup)
		lap(&st.ContainerDelete)
		s.mu.Lock()
		steps.add(st)
		s.mu.Unlock()
		return err
	})
	s.mu.Lock()
	s.steps = append(s.steps, steps.per(n))
	s.mu.Unlock()
	return time.Since(t0), err
}

// lcSteps is where a lifecycle's time goes, summed over containers.
type lcSteps struct {
	NewContainer, NewTask, Start, Exit, TaskDelete, ContainerDelete time.Duration
}

func (a *lcSteps) add(b lcSteps) {
	a.NewContainer += b.NewContainer
	a.NewTask += b.NewTask
	a.Start += b.Start
	a.Exit += b.Exit
	a.TaskDelete += b.TaskDelete
	a.ContainerDelete += b.ContainerDelete
}

func (a lcSteps) per(n int) lcSteps {
	d := time.Duration(max(n, 1))
	return lcSteps{a.NewContainer / d, a.NewTask / d, a.Start / d, a.Exit / d, a.TaskDelete / d, a.ContainerDelete / d}
}

func (a lcSteps) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("NewContainer %v, NewTask %v, Start %v, exit %v, task Delete %v, container Delete %v",
		r(a.NewContainer), r(a.NewTask), r(a.Start), r(a.Exit), r(a.TaskDelete), r(a.ContainerDelete))
}

// rssSettle is -rss-settle.
var rssSettle time.Duration

// rssResult is what m live containers cost in shim processes.
type rssResult struct {
	Shims        int     `json:"shims"`
	RSSKiB       float64 `json:"rss_kib_per_container"`
	PSSKiB       float64 `json:"pss_kib_per_container"`
	StartSeconds float64 `json:"start_s"`
}

// rss starts m sleeper containers (grouped into one shim by the runc.v2
// group label when group is set), lets them settle, sums the RSS and PSS of
// this containerd's shim processes of this runtime, and deletes them.
func (s *shimSide) rss(ctx context.Context, round, m int, group bool, shimBinary string) (rssResult, error) {
	var ann map[string]string
	mode := "per-container"
	if group {
		mode = "grouped"
		ann = map[string]string{"io.containerd.runc.v2.group": fmt.Sprintf("g%d-%s", round, s.name)}
	}
	cs := make([]containerd.Container, m)
	ts := make([]containerd.Task, m)
	defer func() {
		_ = parallelDo(context.WithoutCancel(ctx), m, 8, func(i int) error {
			if cs[i] != nil {
				if err := killDelete(context.WithoutCancel(ctx), cs[i], ts[i]); err != nil {
					fmt.Fprintf(os.Stderr, "bench: %v\n", err)
				}
			}
			return nil
		})
	}()
	t0 := time.Now()
	err := parallelDo(ctx, m, 4, func(i int) error {
		c, t, err := s.startSleeper(ctx, fmt.Sprintf("rss%d-%s-%s-%d", round, mode, s.name, i), ann)
		cs[i], ts[i] = c, t
		return err
	})
	start := time.Since(t0)
	if err != nil {
		return rssResult{}, err
	}
	// Measure the steady state: pkg/shim, under both shims, returns freed
	// memory to the OS every 30 seconds, the first time 30 seconds after
	// start; read before that, RSS holds start-up garbage.
	time.Sleep(rssSettle)
	pids, err := shimsOf(ts, shimBinary)
	if err != nil {
		return rssResult{}, err
	}
	var rss, pss float64
	for _, pid := range pids {
		r, p := memOf(pid)
		rss += r
		pss += p
	}
	return rssResult{
		Shims:        len(pids),
		RSSKiB:       rss / float64(m),
		PSSKiB:       pss / float64(m),
		StartSeconds: start.Seconds(),
	}, nil
}

// shimsOf finds the shim processes serving tasks: each task's init is the
// child of its shim (the shim is a subreaper, and runc create has exited).
func shimsOf(ts []containerd.Task, shimBinary string) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for _, t := range ts {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", t.Pid()))
		if err != nil {
			return nil, err
		}
		st := string(stat)
		i := strings.LastIndexByte(st, ')')
		f := strings.Fields(st[i+1:])
		if len(f) < 2 {
			return nil, fmt.Errorf("/proc/%d/stat: %q", t.Pid(), st)
		}
		ppid, _ := strconv.Atoi(f[1])
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
		if err != nil {
			return nil, err
		}
		if filepath.Base(exe) != shimBinary {
			return nil, fmt.Errorf("task %d: parent %d is %s, not %s", t.Pid(), ppid, exe, shimBinary)
		}
		if !seen[ppid] {
			seen[ppid] = true
			out = append(out, ppid)
		}
	}
	return out, nil
}

// shimPids lists the processes of shimBinary serving the containerd at
// address (their command line names it with -address).
func shimPids(address, shimBinary string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if len(args) == 0 || !strings.HasSuffix(args[0], "/"+shimBinary) && args[0] != shimBinary {
			continue
		}
		for i, a := range args {
			if a == "-address" && i+1 < len(args) && args[i+1] == address {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// memOf reads a process's RSS and PSS in KiB from smaps_rollup.
func memOf(pid int) (rss, pss float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}
