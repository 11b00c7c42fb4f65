package runckitshim_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cgroupsv1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroupsv2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventtypes "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// shimTest is a containerd with the busybox image, for one test.
type shimTest struct {
	*daemon
	img containerd.Image
}

// newShimTest starts a containerd of the test's own, in a namespace named
// for the test, with the busybox image imported.
func newShimTest(t *testing.T) *shimTest {
	t.Helper()
	ns := "rkshim-" + strings.ToLower(strings.TrimPrefix(t.Name(), "TestContainerd"))
	d := startContainerd(t, ns, false, "")
	img := d.importImage(d.testCtx(time.Minute), busyboxRef, "/bin/sh")
	return &shimTest{daemon: d, img: img}
}

// container creates a container running args on the runckit runtime.
func (s *shimTest) container(ctx context.Context, id string, args []string, opts ...oci.SpecOpts) containerd.Container {
	s.t.Helper()
	specOpts := append([]oci.SpecOpts{oci.WithImageConfig(s.img), oci.WithProcessArgs(args...)}, opts...)
	c, err := s.client.NewContainer(ctx, id,
		containerd.WithNewSnapshot(id+"-snap", s.img),
		containerd.WithRuntime(runtimeName, nil),
		containerd.WithNewSpec(specOpts...))
	if err != nil {
		s.t.Fatalf("new container %s: %v", id, err)
	}
	return c
}

// events subscribes to the given topics and returns their events.
func (s *shimTest) events(ctx context.Context, topics ...string) <-chan any {
	s.t.Helper()
	var filters []string
	for _, tp := range topics {
		filters = append(filters, fmt.Sprintf("topic==%q", tp))
	}
	envs, errs := s.client.Subscribe(ctx, filters...)
	out := make(chan any, 4096)
	go func() {
		defer close(out)
		for {
			select {
			case env := <-envs:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					out <- err
					continue
				}
				out <- ev
			case <-errs:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// exitOf waits for a process's exit status.
func exitOf(t *testing.T, ctx context.Context, st <-chan containerd.ExitStatus) uint32 {
	t.Helper()
	select {
	case s := <-st:
		code, _, err := s.Result()
		if err != nil {
			t.Fatalf("exit status: %v", err)
		}
		return code
	case <-ctx.Done():
		t.Fatalf("no exit: %v", ctx.Err())
	}
	return 0
}

// processSpec is an exec's spec from the container's, with args.
func processSpec(t *testing.T, ctx context.Context, c containerd.Container, args ...string) *specs.Process {
	t.Helper()
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := *spec.Process
	p.Args = args
	p.Terminal = false
	return &p
}

// TestContainerdLifecycle: create, start, wait, delete through containerd;
// the exit status and output arrive, and the task events come in order.
func TestContainerdLifecycle(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	evs := s.events(ctx, "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
	c := s.container(ctx, "rkshim-life", []string{"sh", "-c", "echo hello from runckit; exit 7"})
	var out syncBuffer
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
	if err != nil {
		t.Fatalf("new task: %v", err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Created {
		t.Fatalf("status after create = %v, %v; want created", st, err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	if code := exitOf(t, ctx, wait); code != 7 {
		t.Errorf("exit code %d; want 7", code)
	}
	st, err := task.Delete(ctx)
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if st.ExitCode() != 7 {
		t.Errorf("delete's exit code %d; want 7", st.ExitCode())
	}
	if got := out.String(); got != "hello from runckit\n" {
		t.Errorf("output %q", got)
	}
	if _, err := c.Task(ctx, nil); !errdefs.IsNotFound(err) {
		t.Errorf("task after delete: %v; want NotFound", err)
	}
	var topics []string
	for len(topics) < 4 {
		select {
		case ev := <-evs:
			switch e := ev.(type) {
			case *eventtypes.TaskCreate:
				topics = append(topics, "create")
			case *eventtypes.TaskStart:
				topics = append(topics, "start")
			case *eventtypes.TaskExit:
				topics = append(topics, fmt.Sprintf("exit %d", e.ExitStatus))
			case *eventtypes.TaskDelete:
				topics = append(topics, fmt.Sprintf("delete %d", e.ExitStatus))
			default:
				t.Fatalf("event %T %v", ev, ev)
			}
		case <-ctx.Done():
			t.Fatalf("events so far %v: %v", topics, ctx.Err())
		}
	}
	if got := strings.Join(topics, ", "); got != "create, start, exit 7, delete 7" {
		t.Errorf("events: %s; want create, start, exit 7, delete 7", got)
	}
}

// TestContainerdConcurrentExecExitsPrecedeInitExit: 200 execs run at once in
// one task; init is killed while they run. On containerd's event stream the
// TaskExit of every exec comes before init's.
func TestContainerdConcurrentExecExitsPrecedeInitExit(t *testing.T) {
	const n = 200
	s := newShimTest(t)
	ctx := s.testCtx(3 * time.Minute)
	c := s.container(ctx, "rkshim-execs", []string{"sleep", "3600"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	initWait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	evs := s.events(ctx, "/tasks/exit")
	pspec := processSpec(t, ctx, c, "sleep", "3600")
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	waits := make([]<-chan containerd.ExitStatus, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := task.Exec(ctx, fmt.Sprintf("exec-%d", i), pspec, cio.NullIO)
			if err != nil {
				errs <- fmt.Errorf("exec %d: %w", i, err)
				return
			}
			w, err := p.Wait(ctx)
			if err != nil {
				errs <- fmt.Errorf("wait exec %d: %w", i, err)
				return
			}
			waits[i] = w
			if err := p.Start(ctx); err != nil {
				errs <- fmt.Errorf("start exec %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d execs started in %v", n, time.Since(start))
	pids, err := task.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) < n+1 {
		t.Fatalf("%d processes in the task; want %d", len(pids), n+1)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	execExits := map[string]bool{}
	initSeen := false
	for !initSeen {
		select {
		case ev := <-evs:
			e, ok := ev.(*eventtypes.TaskExit)
			if !ok {
				t.Fatalf("event %T %v", ev, ev)
			}
			if e.ContainerID != c.ID() {
				continue
			}
			if e.ID == c.ID() {
				initSeen = true
				if e.ExitStatus != 137 {
					t.Errorf("init's exit status %d; want 137", e.ExitStatus)
				}
				continue
			}
			if execExits[e.ID] {
				t.Errorf("two TaskExit events for exec %s", e.ID)
			}
			execExits[e.ID] = true
		case <-ctx.Done():
			t.Fatalf("init's TaskExit not seen (%d exec exits): %v", len(execExits), ctx.Err())
		}
	}
	if len(execExits) != n {
		t.Errorf("%d exec TaskExit events before init's; want %d", len(execExits), n)
	}
	// Nothing of this task may follow init's exit.
	late := time.After(500 * time.Millisecond)
drain:
	for {
		select {
		case ev := <-evs:
			if e, ok := ev.(*eventtypes.TaskExit); ok && e.ContainerID == c.ID() {
				t.Errorf("TaskExit for %s after init's", e.ID)
			}
		case <-late:
			break drain
		}
	}
	if code := exitOf(t, ctx, initWait); code != 137 {
		t.Errorf("init exit %d; want 137", code)
	}
	for i, w := range waits {
		if code := exitOf(t, ctx, w); code != 137 {
			t.Errorf("exec %d exit %d; want 137", i, code)
		}
	}
}

// TestContainerdTTYResize: with a terminal, init and an exec see the size
// the client sets through ResizePty.
func TestContainerdTTYResize(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	c := s.container(ctx, "rkshim-tty", []string{"sh", "-c", "read x; stty size; exit 3"}, oci.WithTTY)
	stdinR, stdinW := io.Pipe()
	var out syncBuffer
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(stdinR, &out, nil), cio.WithTerminal))
	if err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Resize(ctx, 132, 41); err != nil {
		t.Fatalf("resize init: %v", err)
	}
	if _, err := stdinW.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, wait); code != 3 {
		t.Errorf("init exit %d; want 3", code)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "41 132") {
		t.Errorf("init's output %q; want stty size 41 132", out.String())
	}

	// An exec with a terminal of its own.
	c2 := s.container(ctx, "rkshim-tty2", []string{"sleep", "3600"})
	task2, err := c2.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pspec := processSpec(t, ctx, c2, "sh", "-c", "read x; stty size")
	pspec.Terminal = true
	execInR, execInW := io.Pipe()
	var execOut syncBuffer
	p, err := task2.Exec(ctx, "tty-exec", pspec, cio.NewCreator(cio.WithStreams(execInR, &execOut, nil), cio.WithTerminal))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Resize(ctx, 100, 27); err != nil {
		t.Fatalf("resize exec: %v", err)
	}
	if _, err := execInW.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, pw); code != 0 {
		t.Errorf("exec exit %d", code)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(execOut.String(), "27 100") {
		t.Errorf("exec's output %q; want stty size 27 100", execOut.String())
	}
}

// TestContainerdLargeOutput: 8 MiB written by init, and by an exec, reach
// the client completely.
func TestContainerdLargeOutput(t *testing.T) {
	const size = 8 << 20
	s := newShimTest(t)
	ctx := s.testCtx(2 * time.Minute)
	c := s.container(ctx, "rkshim-big", []string{"sh", "-c", "head -c 8388608 /dev/zero | tr '\\000' a"})
	initOut := &countWriter{want: 'a'}
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, initOut, io.Discard)))
	if err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, wait); code != 0 {
		t.Fatalf("init exit %d", code)
	}
	// Delete waits for the task's IO to be drained.
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if n, other := initOut.counts(); n != size || other != 0 {
		t.Errorf("init: read %d bytes (%d not 'a'); want %d", n, other, size)
	}

	c2 := s.container(ctx, "rkshim-big2", []string{"sleep", "3600"})
	task2, err := c2.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	execOut := &countWriter{want: 'b'}
	p, err := task2.Exec(ctx, "big", processSpec(t, ctx, c2, "sh", "-c", "head -c 8388608 /dev/zero | tr '\\000' b"),
		cio.NewCreator(cio.WithStreams(nil, execOut, io.Discard)))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, pw); code != 0 {
		t.Fatalf("exec exit %d", code)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if n, other := execOut.counts(); n != size || other != 0 {
		t.Errorf("exec: read %d bytes (%d not 'b'); want %d", n, other, size)
	}
}

// TestContainerdCloseStdin: CloseIO closes the process's stdin, so cat sees
// EOF and exits, after echoing what it read; for init and for an exec.
func TestContainerdCloseStdin(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	c := s.container(ctx, "rkshim-stdin", []string{"cat"})
	stdinR, stdinW := io.Pipe()
	var out syncBuffer
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(stdinR, &out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := stdinW.Write([]byte("to init\n")); err != nil {
		t.Fatal(err)
	}
	stdinW.Close()
	if err := task.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		t.Fatalf("close init's stdin: %v", err)
	}

	pspec := processSpec(t, ctx, c, "cat")
	execInR, execInW := io.Pipe()
	var execOut syncBuffer
	// init's cat may exit before the exec starts; run the exec in a second
	// container so that it has a task to run in.
	c2 := s.container(ctx, "rkshim-stdin2", []string{"sleep", "3600"})
	task2, err := c2.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := task2.Exec(ctx, "cat", pspec, cio.NewCreator(cio.WithStreams(execInR, &execOut, nil)))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := execInW.Write([]byte("to exec\n")); err != nil {
		t.Fatal(err)
	}
	execInW.Close()
	if err := p.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		t.Fatalf("close exec's stdin: %v", err)
	}

	if code := exitOf(t, ctx, wait); code != 0 {
		t.Errorf("init's cat exit %d", code)
	}
	if code := exitOf(t, ctx, pw); code != 0 {
		t.Errorf("exec's cat exit %d", code)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "to init\n" {
		t.Errorf("init's output %q", got)
	}
	if got := execOut.String(); got != "to exec\n" {
		t.Errorf("exec's output %q", got)
	}
}

// TestContainerdPauseResume: Pause freezes the task (status Paused, its
// cgroup frozen, TaskPaused published), Resume thaws it (Running,
// TaskResumed).
func TestContainerdPauseResume(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	evs := s.events(ctx, "/tasks/paused", "/tasks/resumed")
	c := s.container(ctx, "rkshim-pause", []string{"sleep", "3600"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expect := func(want string) {
		t.Helper()
		select {
		case ev := <-evs:
			got := fmt.Sprintf("%T", ev)
			if !strings.HasSuffix(got, want) {
				t.Fatalf("event %s; want %s", got, want)
			}
			var cid string
			switch e := ev.(type) {
			case *eventtypes.TaskPaused:
				cid = e.ContainerID
			case *eventtypes.TaskResumed:
				cid = e.ContainerID
			}
			if cid != c.ID() {
				t.Errorf("%s for %q; want %q", want, cid, c.ID())
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", want)
		}
	}
	freezer, err := cgroupDir(task.Pid(), "freezer")
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Paused {
		t.Errorf("status after pause = %v, %v; want paused", st, err)
	}
	if f := filepath.Join(freezer, "freezer.state"); fileExists(f) {
		if got := readTrim(t, f); got != "FROZEN" {
			t.Errorf("freezer.state %s; want FROZEN", got)
		}
	}
	expect("TaskPaused")
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Running {
		t.Errorf("status after resume = %v, %v; want running", st, err)
	}
	if f := filepath.Join(freezer, "freezer.state"); fileExists(f) {
		if got := readTrim(t, f); got != "THAWED" {
			t.Errorf("freezer.state %s; want THAWED", got)
		}
	}
	expect("TaskResumed")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestContainerdUpdateAndStats: Update's resources reach the task's cgroup,
// and Stats reports non-zero metrics of the right type, with the figures
// containerd's cgroups library reads (per-CPU, memory.stat), as the stock
// shim's.
func TestContainerdUpdateAndStats(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	c := s.container(ctx, "rkshim-update", []string{"sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	limit := int64(96 << 20)
	pidsMax := int64(77)
	shares := uint64(333)
	if err := task.Update(ctx, containerd.WithResources(&specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		Pids:   &specs.LinuxPids{Limit: &pidsMax},
		CPU:    &specs.LinuxCPU{Shares: &shares},
	})); err != nil {
		t.Fatalf("update: %v", err)
	}
	memDir, err := cgroupDir(task.Pid(), "memory")
	if err != nil {
		t.Fatal(err)
	}
	pidsDir, err := cgroupDir(task.Pid(), "pids")
	if err != nil {
		t.Fatal(err)
	}
	if f := filepath.Join(memDir, "memory.limit_in_bytes"); fileExists(f) {
		if got := readTrim(t, f); got != fmt.Sprint(limit) {
			t.Errorf("%s = %s; want %d", f, got, limit)
		}
		cpuDir, err := cgroupDir(task.Pid(), "cpu")
		if err != nil {
			t.Fatal(err)
		}
		if got := readTrim(t, filepath.Join(cpuDir, "cpu.shares")); got != fmt.Sprint(shares) {
			t.Errorf("cpu.shares = %s; want %d", got, shares)
		}
	} else if got := readTrim(t, filepath.Join(memDir, "memory.max")); got != fmt.Sprint(limit) {
		t.Errorf("memory.max = %s; want %d", got, limit)
	}
	if got := readTrim(t, filepath.Join(pidsDir, "pids.max")); got != fmt.Sprint(pidsMax) {
		t.Errorf("pids.max = %s; want %d", got, pidsMax)
	}

	// Let the loop run, then read the metrics.
	time.Sleep(300 * time.Millisecond)
	m, err := task.Metrics(ctx)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	if m.ID != c.ID() {
		t.Errorf("metrics for %q; want %q", m.ID, c.ID())
	}
	data, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		t.Fatalf("metrics data: %v", err)
	}
	switch st := data.(type) {
	case *cgroupsv1stats.Metrics:
		if st.GetMemory().GetUsage().GetUsage() == 0 {
			t.Errorf("memory usage 0: %v", st.GetMemory())
		}
		if st.GetMemory().GetUsage().GetLimit() != uint64(limit) {
			t.Errorf("memory limit in metrics %d; want %d", st.GetMemory().GetUsage().GetLimit(), limit)
		}
		if st.GetCPU().GetUsage().GetTotal() == 0 {
			t.Errorf("cpu usage 0: %v", st.GetCPU())
		}
		if st.GetPids().GetCurrent() == 0 || st.GetPids().GetLimit() != uint64(pidsMax) {
			t.Errorf("pids %v; want current > 0, limit %d", st.GetPids(), pidsMax)
		}
		// What the stock shim reports beyond runckit's own Stats: per-CPU
		// usage, the whole memory.stat, the hierarchical limit.
		var perCPU uint64
		for _, u := range st.GetCPU().GetUsage().GetPerCPU() {
			perCPU += u
		}
		if perCPU == 0 {
			t.Errorf("per-CPU usage %v; want the loop's time", st.GetCPU().GetUsage().GetPerCPU())
		}
		if st.GetMemory().GetHierarchicalMemoryLimit() != uint64(limit) || st.GetMemory().GetPgFault() == 0 {
			t.Errorf("memory.stat: hierarchical_memory_limit %d, pgfault %d; want %d and > 0",
				st.GetMemory().GetHierarchicalMemoryLimit(), st.GetMemory().GetPgFault(), limit)
		}
	case *cgroupsv2stats.Metrics:
		if st.GetMemory().GetUsage() == 0 || st.GetCPU().GetUsageUsec() == 0 || st.GetPids().GetCurrent() == 0 {
			t.Errorf("zero metrics: %v", st)
		}
		if st.GetMemory().GetPgfault() == 0 || st.GetMemory().GetUsageLimit() != uint64(limit) {
			t.Errorf("memory.stat: pgfault %d, limit %d; want > 0 and %d", st.GetMemory().GetPgfault(), st.GetMemory().GetUsageLimit(), limit)
		}
	default:
		t.Fatalf("metrics of type %T", data)
	}
}

// TestContainerdOOMEventBeforeExit: a task that outgrows its memory limit
// is OOM-killed; TaskOOM is published before init's TaskExit.
func TestContainerdOOMEventBeforeExit(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	evs := s.events(ctx, "/tasks/oom", "/tasks/exit")
	c := s.container(ctx, "rkshim-oom", []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"},
		oci.WithMemoryLimit(32<<20))
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, wait); code != 137 {
		t.Errorf("exit %d; want 137 (OOM kill)", code)
	}
	var seq []string
	for len(seq) == 0 || seq[len(seq)-1] != "exit" {
		select {
		case ev := <-evs:
			switch e := ev.(type) {
			case *eventtypes.TaskOOM:
				if e.ContainerID == c.ID() {
					seq = append(seq, "oom")
				}
			case *eventtypes.TaskExit:
				if e.ContainerID == c.ID() {
					seq = append(seq, "exit")
				}
			}
		case <-ctx.Done():
			t.Fatalf("events %v: %v", seq, ctx.Err())
		}
	}
	if len(seq) < 2 || seq[0] != "oom" {
		t.Errorf("events %v; want TaskOOM before TaskExit", seq)
	}
}

// TestContainerdKillAll: Kill with All signals every process of the task:
// init (a shell without a SIGTERM handler, which SIGTERM to init alone does
// not end) sees its children and an exec die, and exits 42.
func TestContainerdKillAll(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	c := s.container(ctx, "rkshim-killall", []string{"sh", "-c", "sleep 3600 & sleep 3600 & wait; exit 42"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := task.Exec(ctx, "sleeper", processSpec(t, ctx, c, "sleep", "3600"), cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Both sleeps of init must be running before the signal.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := task.Pids(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d processes in the task; want 4", len(pids))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := task.Kill(ctx, syscall.SIGTERM, containerd.WithKillAll); err != nil {
		t.Fatalf("kill all: %v", err)
	}
	if code := exitOf(t, ctx, wait); code != 42 {
		t.Errorf("init exit %d; want 42 (its children got SIGTERM)", code)
	}
	if code := exitOf(t, ctx, pw); code != 128+uint32(syscall.SIGTERM) {
		t.Errorf("exec exit %d; want %d", code, 128+syscall.SIGTERM)
	}
}

// TestContainerdRestart: containerd stops and starts again while tasks run.
// The running task is still there and controllable (exec, kill, wait); the
// one whose init exited while containerd was down is reaped by containerd
// through the shim as it starts, leaving nothing behind.
func TestContainerdRestart(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(2 * time.Minute)
	c := s.container(ctx, "rkshim-restart", []string{"sleep", "3600"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := s.container(ctx, "rkshim-restart2", []string{"sh", "-c", "sleep 2; exit 9"})
	task2, err := c2.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid, pid2 := task.Pid(), task2.Pid()
	shimPid2, err := parentPid(pid2)
	if err != nil {
		t.Fatal(err)
	}

	s.stop()
	// With containerd down, the second task's init exits.
	deadline := time.Now().Add(20 * time.Second)
	for fileExists(fmt.Sprintf("/proc/%d", pid2)) && !isZombie(pid2) {
		if time.Now().After(deadline) {
			t.Fatalf("second task's init %d did not exit", pid2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.start()
	ctx = s.testCtx(2 * time.Minute)

	c, err = s.client.LoadContainer(ctx, "rkshim-restart")
	if err != nil {
		t.Fatal(err)
	}
	task, err = c.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task after restart: %v", err)
	}
	if task.Pid() != pid {
		t.Errorf("pid after restart %d; want %d", task.Pid(), pid)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Running {
		t.Fatalf("status after restart = %v, %v; want running", st, err)
	}
	var out syncBuffer
	p, err := task.Exec(ctx, "after-restart", processSpec(t, ctx, c, "sh", "-c", "echo still here; exit 5"),
		cio.NewCreator(cio.WithStreams(nil, &out, nil)))
	if err != nil {
		t.Fatalf("exec after restart: %v", err)
	}
	pw, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, ctx, pw); code != 5 {
		t.Errorf("exec exit %d; want 5", code)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if out.String() != "still here\n" {
		t.Errorf("exec output %q", out.String())
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill after restart: %v", err)
	}
	if code := exitOf(t, ctx, wait); code != 137 {
		t.Errorf("init exit %d; want 137", code)
	}
	if st, err := task.Delete(ctx); err != nil || st.ExitCode() != 137 {
		t.Errorf("delete = %v, %v; want exit 137", st, err)
	}

	// containerd reaps, as it loads them, shims whose task has no process
	// left (containerd#6860): the task that exited while it was down is
	// deleted through the shim, which leaves nothing behind and exits.
	c2, err = s.client.LoadContainer(ctx, "rkshim-restart2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Task(ctx, nil); !errdefs.IsNotFound(err) {
		t.Errorf("second task after restart: %v; want NotFound (reaped by containerd)", err)
	}
	if st := filepath.Join("/run/containerd/runc", s.ns, c2.ID()); fileExists(st) {
		t.Errorf("runc state %s left behind", st)
	}
	if root := filepath.Join(s.dir, "state", "io.containerd.runtime.v2.task", s.ns, c2.ID(), "rootfs"); mounted(t, root) {
		t.Errorf("rootfs %s still mounted", root)
	}
	deadline = time.Now().Add(10 * time.Second)
	for fileExists(fmt.Sprintf("/proc/%d", shimPid2)) && !isZombie(uint32(shimPid2)) {
		if time.Now().After(deadline) {
			t.Errorf("the second task's shim %d still runs", shimPid2)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if log, _ := os.ReadFile(s.log.Name()); bytes.Contains(log, []byte("failed to clean up leaked shim")) {
		t.Errorf("containerd could not reap the second task's shim (see its log)")
	}
}

// isZombie says whether pid has exited but is not reaped.
func isZombie(pid uint32) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i > 0 && i+2 < len(data) && data[i+2] == 'Z'
}

// TestContainerdShimKilled: the shim is SIGKILLed under a running task.
// containerd notices, runs `containerd-shim-runckit-v1 delete` in the
// bundle, and publishes the task's exit; nothing is left behind: no runc
// state, no rootfs mount, no cgroup, no container process.
func TestContainerdShimKilled(t *testing.T) {
	s := newShimTest(t)
	ctx := s.testCtx(time.Minute)
	evs := s.events(ctx, "/tasks/exit", "/tasks/delete")
	c := s.container(ctx, "rkshim-shimkill", []string{"sleep", "3600"})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := task.Pid()
	shimPid, err := parentPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", shimPid))
	if !bytes.Contains(cmdline, []byte("containerd-shim-runckit-v1")) {
		t.Fatalf("init's parent %d is %q; want the runckit shim", shimPid, cmdline)
	}
	var cgroups []string
	for _, ctrl := range []string{"memory", "pids", "cpu", "freezer", "devices"} {
		dir, err := cgroupDir(pid, ctrl)
		if err != nil {
			t.Fatal(err)
		}
		if !fileExists(dir) {
			t.Fatalf("cgroup %s of the task does not exist", dir)
		}
		cgroups = append(cgroups, dir)
	}
	bundle := filepath.Join(s.dir, "state", "io.containerd.runtime.v2.task", s.ns, c.ID())
	runcState := filepath.Join("/run/containerd/runc", s.ns, c.ID())
	if !fileExists(runcState) {
		t.Fatalf("runc state %s does not exist while the task runs", runcState)
	}
	if !mounted(t, filepath.Join(bundle, "rootfs")) {
		t.Fatalf("rootfs %s not mounted while the task runs", filepath.Join(bundle, "rootfs"))
	}

	if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var exit *eventtypes.TaskExit
	for exit == nil {
		select {
		case ev := <-evs:
			if e, ok := ev.(*eventtypes.TaskExit); ok && e.ContainerID == c.ID() {
				exit = e
			}
		case <-ctx.Done():
			t.Fatalf("no TaskExit after the shim was killed: %v", ctx.Err())
		}
	}
	if exit.ExitStatus != 137 {
		t.Errorf("TaskExit status %d; want 137", exit.ExitStatus)
	}
	// containerd removes the task once its cleanup is done.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.Task(ctx, nil)
		if errdefs.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task still known 20s after its shim died: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fileExists(fmt.Sprintf("/proc/%d", pid)) && !isZombie(pid) {
		t.Errorf("container init %d still runs", pid)
	}
	if fileExists(runcState) {
		t.Errorf("runc state %s left behind", runcState)
	}
	if mounted(t, filepath.Join(bundle, "rootfs")) {
		t.Errorf("rootfs mount left behind")
	}
	for _, dir := range cgroups {
		if fileExists(dir) {
			t.Errorf("cgroup %s left behind", dir)
		}
	}
	if fileExists(bundle) {
		t.Errorf("bundle %s left behind", bundle)
	}
}

// mounted says whether a mount point at path is in our mount table.
func mounted(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
