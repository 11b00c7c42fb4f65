package runckit_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// runContainer starts a container whose init sleeps, for commands to run in.
func runContainer(t *testing.T, ctx context.Context, e *env) *runckit.Container {
	t.Helper()
	c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// noExecsLeft fails the test if a Cmd left its exec in the container.
func noExecsLeft(t *testing.T, c *runckit.Container) {
	t.Helper()
	if ps := c.Processes(); len(ps) != 0 {
		var ids []string
		for _, p := range ps {
			ids = append(ids, p.ID())
		}
		t.Errorf("execs left in the container: %v", ids)
	}
}

func TestCmdOutput(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := runContainer(t, ctx, e)

	out, err := c.Command("echo", "hi").Output(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "hi\n" {
		t.Errorf("Output = %q, want %q", out, "hi\n")
	}
	// stderr is not part of Output.
	out, err = c.Command("sh", "-c", "echo out; echo err >&2").Output(ctx)
	if err != nil || string(out) != "out\n" {
		t.Errorf("Output = %q, %v; want %q, nil", out, err, "out\n")
	}
	// Stdin reaches the process.
	cmd := c.Command("cat")
	cmd.Stdin = strings.NewReader("from stdin")
	if out, err = cmd.Output(ctx); err != nil || string(out) != "from stdin" {
		t.Errorf("cat Output = %q, %v; want %q, nil", out, err, "from stdin")
	}
	noExecsLeft(t, c)
	// Each run was a real exec, published and then deleted.
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var added, exited int
	for _, ev := range e.rec.Events() {
		switch {
		case ev.Kind == runckit.EventExecAdded && strings.HasPrefix(ev.ExecID, "run-"):
			added++
		case ev.Kind == runckit.EventExit && ev.ExecID != "":
			exited++
		}
	}
	if added != 3 || exited != 3 {
		t.Errorf("events: %d exec-added and %d exec exits, want 3 and 3: %s", added, exited, kinds(e.rec.Events()))
	}
}

func TestCmdCombinedOutputKeepsOrder(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	c := runContainer(t, ctx, newEnv(t))
	// Alternating streams: with a pipe per stream the interleaving would be
	// up to the copy goroutines; one shared pipe keeps the written order.
	script := "for i in 1 2 3 4 5 6 7 8 9 10; do echo out$i; echo err$i >&2; done"
	var want strings.Builder
	for i := 1; i <= 10; i++ {
		want.WriteString("out" + itoa(i) + "\nerr" + itoa(i) + "\n")
	}
	for range 5 {
		out, err := c.Command("sh", "-c", script).CombinedOutput(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != want.String() {
			t.Fatalf("CombinedOutput = %q, want %q", out, want.String())
		}
	}
	// The same writer set by hand is merged the same way.
	var buf bytes.Buffer
	cmd := c.Command("sh", "-c", "echo a; echo b >&2; echo c")
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "a\nb\nc\n" {
		t.Errorf("Run with Stdout == Stderr wrote %q, want %q", buf.String(), "a\nb\nc\n")
	}
	noExecsLeft(t, c)
}

func TestCmdExitError(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	c := runContainer(t, ctx, newEnv(t))

	out, err := c.Command("sh", "-c", "echo partial; echo bad thing >&2; exit 3").Output(ctx)
	var ee *runckit.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Output error = %v (%T), want *runckit.ExitError", err, err)
	}
	if ee.Code != 3 || ee.Signal != 0 || ee.Success() {
		t.Errorf("ExitError status = %+v, want code 3", ee.ExitStatus)
	}
	if string(ee.Stderr) != "bad thing\n" {
		t.Errorf("ExitError.Stderr = %q, want %q", ee.Stderr, "bad thing\n")
	}
	if string(out) != "partial\n" {
		t.Errorf("Output with an error = %q, want what was written: %q", out, "partial\n")
	}
	if msg := err.Error(); !strings.Contains(msg, `"sh"`) || !strings.Contains(msg, c.ID()) || !strings.Contains(msg, "exit code 3") {
		t.Errorf("message %q should name the command, the container and the code", msg)
	}

	// Run does not capture stderr; a signal death is an ExitError too.
	err = c.Command("sh", "-c", "kill -9 $$").Run(ctx)
	if !errors.As(err, &ee) || ee.Signal != syscall.SIGKILL || ee.Code != 137 || ee.Stderr != nil {
		t.Errorf("Run of a killed command = %v (%+v), want an ExitError for SIGKILL, code 137, no Stderr", err, ee)
	}

	// A long stderr keeps its start and end.
	_, err = c.Command("sh", "-c", "echo first >&2; i=0; while [ $i -lt 3000 ]; do echo ....................; i=$((i+1)); done >&2; echo last >&2; exit 1").Output(ctx)
	if !errors.As(err, &ee) {
		t.Fatalf("err = %v, want ExitError", err)
	}
	if s := string(ee.Stderr); !strings.HasPrefix(s, "first\n") || !strings.HasSuffix(s, "last\n") ||
		!strings.Contains(s, "omitting") || len(s) > 33<<10 {
		t.Errorf("long Stderr: %d bytes, starts %q, ends %q", len(s), s[:min(len(s), 20)], s[max(0, len(s)-20):])
	}
	noExecsLeft(t, c)
}

func TestCmdContextKillsAndCleansUp(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := runContainer(t, ctx, e)

	// The context ends once the process runs (its exec-started event is
	// out), so this is the kill path, not a runc exec cut short.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cancelled time.Time
	go func() {
		e.rec.WaitFor(runCtx, func(ev runckit.Event) bool { return ev.Kind == runckit.EventExecStarted })
		cancelled = time.Now()
		cancel()
	}()
	err := c.Command("sleep", "1000").Run(runCtx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want an error wrapping context.Canceled", err)
	}
	took := time.Since(cancelled) // written before cancel: ordered by ctx.Done
	if took > 5*time.Second {
		t.Errorf("Run returned %v after its context ended, want promptly", took)
	}
	t.Logf("Run returned %v after its context was cancelled: %v", took, err)
	noExecsLeft(t, c)
	onlyInit(t, ctx, c)
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var killed bool
	for _, ev := range e.rec.Events() {
		if ev.Kind == runckit.EventExit && ev.ExecID != "" && ev.Status.Signal == syscall.SIGKILL {
			killed = true
		}
	}
	if !killed {
		t.Errorf("no exec exit by SIGKILL among %s", kinds(e.rec.Events()))
	}

	// A context that ends while runc exec may still be running (the
	// exec-added event is seen, the start may or may not be done): either
	// way nothing is left behind.
	for range 5 {
		runCtx, cancel := context.WithCancel(ctx)
		seen := len(e.rec.Events())
		go func() {
			e.rec.WaitFor(runCtx, func(ev runckit.Event) bool {
				return ev.Kind == runckit.EventExecAdded && ev.Seq > uint64(seen)
			})
			cancel()
		}()
		err := c.Command("sleep", "1000").Run(runCtx)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want an error wrapping context.Canceled", err)
		}
		noExecsLeft(t, c)
		onlyInit(t, ctx, c)
	}

	// A context that is already done runs nothing.
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	if err := c.Command("true").Run(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Run with a done context = %v, want context.Canceled", err)
	}
	noExecsLeft(t, c)
}

// onlyInit fails the test unless init is the container's only process.
func onlyInit(t *testing.T, ctx context.Context, c *runckit.Container) {
	t.Helper()
	procs, err := c.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) != 1 || procs[0].Pid != c.Init().Pid() {
		t.Errorf("processes in the container: %+v, want init alone", procs)
	}
}

func TestCmdDerivedSpec(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sleep", "100000")
	spec.Process.Env = []string{"PATH=/bin", "HOME=/tmp", "GREETING=hello from the spec"}
	spec.Process.Cwd = "/tmp"
	spec.Process.User.UID, spec.Process.User.GID = 1000, 1000
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}

	out, err := c.Command("env").Output(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range spec.Process.Env {
		if !strings.Contains("\n"+string(out), "\n"+kv+"\n") {
			t.Errorf("env lacks %q:\n%s", kv, out)
		}
	}
	if out, err := c.Command("pwd").Output(ctx); err != nil || string(out) != "/tmp\n" {
		t.Errorf("pwd = %q, %v; want /tmp", out, err)
	}
	if out, err := c.Command("id", "-u").Output(ctx); err != nil || string(out) != "1000\n" {
		t.Errorf("id -u = %q, %v; want 1000", out, err)
	}

	// ProcessSpec is a copy: changing it changes neither the container nor
	// the next spec; Cmd.Spec can be adjusted before running.
	p, err := c.ProcessSpec("id", "-u")
	if err != nil {
		t.Fatal(err)
	}
	if p.Terminal || p.Cwd != "/tmp" || p.User.UID != 1000 || !p.NoNewPrivileges || len(p.Rlimits) != 1 ||
		p.Capabilities == nil || len(p.Capabilities.Bounding) != len(spec.Process.Capabilities.Bounding) {
		t.Errorf("ProcessSpec = %+v, want the container's process settings", p)
	}
	p.Env[0] = "PATH=/changed"
	p.Capabilities.Bounding[0] = "CAP_CHANGED"
	again, _ := c.ProcessSpec("true")
	if again.Env[0] != "PATH=/bin" || again.Capabilities.Bounding[0] == "CAP_CHANGED" {
		t.Errorf("a change to one ProcessSpec reached the next: %v %v", again.Env, again.Capabilities.Bounding)
	}
	cmd := c.Command("id", "-u")
	cmd.Spec.User.UID = 0
	if out, err := cmd.Output(ctx); err != nil || string(out) != "0\n" {
		t.Errorf("id -u with Spec.User.UID = 0: %q, %v; want 0", out, err)
	}
	noExecsLeft(t, c)
}

func TestCmdMisuse(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	c := runContainer(t, ctx, newEnv(t))

	cmd := c.Command("true")
	if err := cmd.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Run(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Run = %v, want ErrFailedPrecondition", err)
	}
	cmd = c.Command("true")
	cmd.Stdout = &bytes.Buffer{}
	if _, err := cmd.Output(ctx); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Output with Stdout set = %v, want ErrInvalidArgument", err)
	}
	cmd = c.Command("true")
	cmd.Stderr = &bytes.Buffer{}
	if _, err := cmd.CombinedOutput(ctx); !errdefs.IsInvalidArgument(err) {
		t.Errorf("CombinedOutput with Stderr set = %v, want ErrInvalidArgument", err)
	}
	if err := c.Command().Run(ctx); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Run with no args = %v, want ErrInvalidArgument", err)
	}
	if err := (&runckit.Cmd{}).Run(ctx); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Run of a zero Cmd = %v, want ErrInvalidArgument", err)
	}
	// A program that does not exist is a start failure, and leaves nothing.
	if err := c.Command("/no/such/program").Run(ctx); err == nil {
		t.Error("Run of a missing program succeeded")
	} else if errors.As(err, new(*runckit.ExitError)) {
		t.Errorf("Run of a missing program = %v, want a start error, not an ExitError", err)
	}
	// An exec ID the caller already holds is skipped, not taken over.
	runckit.SetExecSeq(1 << 40)
	mine, err := c.Exec(ctx, "run-"+fmtInt(1<<40+1), runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Command("echo", "ok").Output(ctx); err != nil || string(out) != "ok\n" {
		t.Errorf("Output beside a caller's run-N exec = %q, %v", out, err)
	}
	if ps := c.Processes(); len(ps) != 1 || ps[0] != mine {
		t.Errorf("execs after the run: %v, want only the caller's", ps)
	}
	if err := mine.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	noExecsLeft(t, c)

	// After init exits, commands fail with the container's precondition.
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Command("true").Run(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Run after init exited = %v, want ErrFailedPrecondition", err)
	}
	noExecsLeft(t, c)
}

// A command whose background child keeps its output open returns after the
// drain timeout with what was written and ErrDrainTimeout, as Wait does,
// whether its streams are separate pipes (Output) or one (CombinedOutput).
func TestCmdDrainTimeout(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"), runckit.WithDrainTimeout(300*time.Millisecond))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func(*runckit.Cmd) ([]byte, error){
		"Output":         func(cmd *runckit.Cmd) ([]byte, error) { return cmd.Output(ctx) },
		"CombinedOutput": func(cmd *runckit.Cmd) ([]byte, error) { return cmd.CombinedOutput(ctx) },
	} {
		begin := time.Now()
		out, err := run(c.Command("sh", "-c", "sleep 1000 & echo hi"))
		took := time.Since(begin)
		if !errors.Is(err, runckit.ErrDrainTimeout) || string(out) != "hi\n" {
			t.Errorf("%s = %q, %v; want %q and ErrDrainTimeout", name, out, err, "hi\n")
		}
		if took > 5*time.Second {
			t.Errorf("%s took %v with a 300ms drain timeout", name, took)
		}
	}
	noExecsLeft(t, c)
}

// A writer that fails is reported with the exit status, as os/exec does;
// it is not taken for the context ending, and a failed exit is still an
// *ExitError.
func TestCmdWriterErrorIsNotACancel(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := runContainer(t, ctx, e)

	cmd := c.Command("sh", "-c", "echo hi; exit 0")
	cmd.Stdout = &failingWriter{}
	err := cmd.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "stdout") || strings.Contains(err.Error(), "context") {
		t.Errorf("Run with a failing Stdout = %v, want the write error", err)
	}
	cmd = c.Command("sh", "-c", "echo hi; exit 4")
	cmd.Stdout = &failingWriter{}
	var ee *runckit.ExitError
	if err := cmd.Run(ctx); !errors.As(err, &ee) || ee.Code != 4 {
		t.Errorf("Run with a failing Stdout and exit 4 = %v, want an *ExitError with code 4", err)
	}
	noExecsLeft(t, c)
}
