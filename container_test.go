package runckit_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

var idSeq struct {
	sync.Mutex
	n int
}

// newID returns a container ID unique within the test binary.
func newID(t *testing.T) string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	name := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
	if len(name) > 50 {
		name = name[:50]
	}
	return strings.Trim(name, "-") + "-" + time.Now().Format("150405") + "-" + itoa(idSeq.n)
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(n)) }

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

// env is one test's container: its runtime root, recorder and cleanup.
type env struct {
	t    *testing.T
	root string
	rec  *runckittest.Recorder
}

func newEnv(t *testing.T) *env {
	return &env{t: t, root: runckittest.RuntimeRoot(t), rec: &runckittest.Recorder{}}
}

// create makes a container running args with the test's root, recorder and
// runtime (runckittest.Runtime; opts may name another), force-deleted when
// the test ends.
func (e *env) create(ctx context.Context, spec *specs.Spec, opts ...runckit.Option) *runckit.Container {
	e.t.Helper()
	opts = append([]runckit.Option{runckit.WithRuntime(runckittest.Runtime()), runckit.WithRuntimeRoot(e.root), runckit.WithEventSink(e.rec)}, opts...)
	c, err := runckit.NewContainer(ctx, newID(e.t), runckittest.Bundle(e.t, spec), opts...)
	if err != nil {
		e.t.Fatalf("NewContainer: %v", err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
			e.t.Errorf("cleanup delete %s: %v", c.ID(), err)
		}
	})
	return c
}

func kinds(events []runckit.Event) string {
	var s []string
	for _, e := range events {
		k := e.Kind.String()
		if e.ExecID != "" {
			k += ":" + e.ExecID
		}
		s = append(s, k)
	}
	return strings.Join(s, " ")
}

func TestRunCapturesOutputAndEvents(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	var stdout, stderr bytes.Buffer
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "echo hello; echo oops >&2"),
		runckit.WithStdio(runckit.Stdio{Stdout: &stdout, Stderr: &stderr}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Success() {
		t.Errorf("status = %v, want exit code 0", st)
	}
	if got := stdout.String(); got != "hello\n" {
		t.Errorf("stdout = %q, want %q", got, "hello\n")
	}
	if got := stderr.String(); got != "oops\n" {
		t.Errorf("stderr = %q, want %q", got, "oops\n")
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(e.rec.Events()), "create start exit delete"; got != want {
		t.Errorf("events = %q, want %q", got, want)
	}
	for i, ev := range e.rec.Events() {
		if ev.Seq != uint64(i+1) || ev.ContainerID != c.ID() {
			t.Errorf("event %d = %+v: want seq %d for container %s", i, ev, i+1, c.ID())
		}
	}
	if err := c.Start(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("Start after Delete = %v, want ErrNotFound", err)
	}
}

func TestExitCodeAndSignal(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "exit 3"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil || st.Code != 3 || st.Signal != 0 {
		t.Errorf("Wait = %v, %v; want exit code 3", st, err)
	}

	k := e.create(ctx, runckittest.Spec(t, "sleep", "1000"))
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, err = k.Wait(ctx)
	if err != nil || st.Signal != syscall.SIGKILL || st.Code != 137 {
		t.Errorf("Wait = %v, %v; want killed by SIGKILL (code 137)", st, err)
	}
}

func TestStdinPipedIntoCat(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	var out bytes.Buffer
	c := e.create(ctx, runckittest.Spec(t, "cat"),
		runckit.WithStdio(runckit.Stdio{Stdin: strings.NewReader("piped through\n"), Stdout: &out}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if out.String() != "piped through\n" {
		t.Errorf("stdout = %q", out.String())
	}
}

func TestTerminalProcessSeesTTY(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "tty; [ -t 1 ] && echo is-a-tty")
	spec.Process.Terminal = true
	var out syncBuffer
	c := e.create(ctx, spec, runckit.WithStdio(runckit.Stdio{Terminal: true, Stdout: &out}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if got := out.String(); !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "is-a-tty") {
		t.Errorf("terminal output = %q, want a /dev/pts name and is-a-tty", got)
	}

	// An exec with a terminal in a running container.
	d := e.create(ctx, runckittest.Spec(t, "sleep", "1000"))
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var eout syncBuffer
	p, err := d.Exec(ctx, "tty", runckittest.ProcessSpec("sh", "-c", "[ -t 0 ] && echo exec-tty"), runckit.Stdio{Terminal: true, Stdout: &eout})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("exec Wait = %v, %v", st, err)
	}
	if !strings.Contains(eout.String(), "exec-tty") {
		t.Errorf("exec terminal output = %q", eout.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ = errors.Is
