package runckit_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// blockingWriter's Write blocks until release is called.
type blockingWriter struct {
	entered   chan struct{} // closed when the first Write starts
	enterOnce sync.Once
	released  chan struct{}
	relOnce   sync.Once
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{entered: make(chan struct{}), released: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.enterOnce.Do(func() { close(w.entered) })
	<-w.released
	return len(p), nil
}

func (w *blockingWriter) release() { w.relOnce.Do(func() { close(w.released) }) }

// A caller's Write that blocks does not hold Wait past the drain timeout,
// nor Delete: Wait returns the status with ErrDrainTimeout, Delete
// succeeds, and the copy ends on its own once the writer returns (the
// suite's goroutine check sees to that).
func TestIOStreamsDrainTimeoutBoundsBlockedWriter(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	w := newBlockingWriter()
	defer w.release()
	const drain = 300 * time.Millisecond
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "echo hello; exit 4"),
		runckit.WithDrainTimeout(drain), runckit.WithStdio(runckit.Stdio{Stdout: w}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.entered:
	case <-ctx.Done():
		t.Fatal("the output copy never called Write")
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	st, err := c.Wait(waitCtx)
	took := time.Since(start)
	if !errors.Is(err, runckit.ErrDrainTimeout) || st.Code != 4 {
		t.Fatalf("Wait = %v, %v after %v; want exit code 4 with ErrDrainTimeout", st, err, took)
	}
	if took > drain+2*time.Second {
		t.Errorf("Wait took %v with a drain timeout of %v", took, drain)
	}
	t.Logf("Wait returned after %v (drain timeout %v)", took, drain)
	delCtx, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	if err := c.Delete(delCtx); err != nil {
		t.Fatalf("Delete with the writer still blocked: %v", err)
	}
}

// The same for an exec: its Wait is bounded and its ID can be freed.
func TestIOStreamsDrainTimeoutBlockedWriterExec(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	w := newBlockingWriter()
	defer w.release()
	c := e.sleeper(ctx, runckit.WithDrainTimeout(300*time.Millisecond))
	p, err := c.Exec(ctx, "blocked", runckittest.ProcessSpec("echo", "hello"), runckit.Stdio{Stdout: w, Stderr: w})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if st, err := p.Wait(waitCtx); !errors.Is(err, runckit.ErrDrainTimeout) || !st.Success() {
		t.Fatalf("Wait = %v, %v; want success with ErrDrainTimeout", st, err)
	}
	if err := p.Delete(ctx); err != nil {
		t.Fatalf("Delete of the exec: %v", err)
	}
}

// One writer given as both Stdout and Stderr is never written by two
// goroutines at once (as os/exec): a plain bytes.Buffer survives -race, and
// gets every byte of both streams, each line whole.
func TestIOStreamsSharedWriterSerialised(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	const n = 3000
	const outLine = "out-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
	const errLine = "err-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
	script := "i=0; while [ $i -lt 3000 ]; do echo " + outLine + "; echo " + errLine + " >&2; i=$((i+1)); done"
	var buf bytes.Buffer
	p, err := c.Exec(ctx, "both", runckittest.ProcessSpec("sh", "-c", script), runckit.Stdio{Stdout: &buf, Stderr: &buf})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if want := n * (len(outLine) + len(errLine) + 2); buf.Len() != want {
		t.Errorf("got %d bytes, want %d", buf.Len(), want)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	var outs, errs int
	for _, l := range lines {
		switch l {
		case outLine:
			outs++
		case errLine:
			errs++
		default:
			t.Fatalf("torn line %q", l)
		}
	}
	if outs != n || errs != n {
		t.Errorf("got %d stdout and %d stderr lines, want %d each", outs, errs, n)
	}
}

var errDiskFull = errors.New("disk full")

// failingWriter fails every Write.
type failingWriter struct{ calls int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.calls++
	return 0, errDiskFull
}

// An output writer's error is Wait's error, with the exit status and the
// stream named, as os/exec returns it; the copy stops, so a process that
// keeps writing gets SIGPIPE instead of running on.
func TestIOStreamsCopyErrorReturnedByWait(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)

	var fw failingWriter
	p, err := c.Exec(ctx, "fails", runckittest.ProcessSpec("sh", "-c", "echo a; exit 3"), runckit.Stdio{Stdout: &fw})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if !errors.Is(err, errDiskFull) || st.Code != 3 {
		t.Fatalf("Wait = %v, %v; want exit code 3 with the writer's error", st, err)
	}
	if !strings.Contains(err.Error(), "stdout") {
		t.Errorf("error %q does not name the stream", err)
	}

	var ew failingWriter
	q, err := c.Exec(ctx, "stderr-fails", runckittest.ProcessSpec("sh", "-c", "echo a >&2"), runckit.Stdio{Stderr: &ew})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Wait(ctx); !errors.Is(err, errDiskFull) || !strings.Contains(err.Error(), "stderr") {
		t.Errorf("Wait = %v; want the writer's error naming stderr", err)
	}

	var yw failingWriter
	y, err := c.Exec(ctx, "yes", runckittest.ProcessSpec("yes"), runckit.Stdio{Stdout: &yw})
	if err != nil {
		t.Fatal(err)
	}
	if err := y.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err = y.Wait(waitCtx)
	if !errors.Is(err, errDiskFull) || st.Signal != syscall.SIGPIPE {
		t.Errorf("Wait for yes = %v, %v; want SIGPIPE with the writer's error", st, err)
	}
	if yw.calls != 1 {
		t.Errorf("the failing writer was called %d times, want 1", yw.calls)
	}
}

// CloseStdin is refused when runckit has no stdin pipe to close: Stdin nil,
// an *os.File handed to the process, or a plain file path.
func TestIOStreamsCloseStdinWithoutPipe(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	file := filepath.Join(t.TempDir(), "in")
	os.WriteFile(file, []byte("x\n"), 0o600)
	cases := []struct {
		name  string
		stdio runckit.Stdio
		hint  string
	}{
		{"nil", runckit.Stdio{}, "nil"},
		{"os-file", runckit.Stdio{Stdin: r}, "*os.File"},
		{"path", runckit.Stdio{StdinPath: file}, "file"},
	}
	for _, tc := range cases {
		p, err := c.Exec(ctx, "nopipe-"+tc.name, runckittest.ProcessSpec("cat"), tc.stdio)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		err = p.CloseStdin()
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "no stdin pipe") || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%s: CloseStdin = %v, want ErrFailedPrecondition saying there is no stdin pipe (%s)", tc.name, err, tc.hint)
		}
		if tc.name == "os-file" {
			w.Close()
		}
		if st, err := p.Wait(ctx); err != nil || !st.Success() {
			t.Errorf("%s: Wait = %v, %v", tc.name, st, err)
		}
	}
}

// With a terminal, CloseStdin stops the copy from Stdin and types the
// terminal's end-of-file character, so a `cat` reading the terminal ends
// (and its output still arrives). With no Stdin reader it does the same.
func TestIOStreamsCloseStdinTerminal(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	for _, withReader := range []bool{true, false} {
		name := "tty-reader"
		var stdin io.Reader
		var pw *io.PipeWriter
		if withReader {
			var pr *io.PipeReader
			pr, pw = io.Pipe()
			stdin = pr
		} else {
			name = "tty-noreader"
		}
		spec := runckittest.ProcessSpec("cat")
		spec.Terminal = true
		var out syncBuffer
		p, err := c.Exec(ctx, name, spec, runckit.Stdio{Terminal: true, Stdin: stdin, Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if withReader {
			if _, err := pw.Write([]byte("typed\n")); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.CloseStdin(); err != nil {
			t.Fatalf("%s: CloseStdin = %v", name, err)
		}
		if err := p.CloseStdin(); err != nil {
			t.Errorf("%s: second CloseStdin = %v, want nil", name, err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := p.Wait(waitCtx)
		cancel()
		if err != nil || !st.Success() {
			p.Kill(ctx, syscall.SIGKILL)
			p.Wait(ctx)
			t.Errorf("%s: cat did not end after CloseStdin: Wait = %v, %v", name, st, err)
		}
		if withReader {
			if !strings.Contains(out.String(), "typed") {
				t.Errorf("%s: output %q lacks the typed line", name, out.String())
			}
			// After CloseStdin nothing more is copied from the reader.
			done := make(chan struct{})
			go func() {
				pw.Write([]byte("late\n"))
				close(done)
			}()
			pw.Close()
			<-done
		}
	}
}

// A create or an exec that runc refuses leaves nothing of its IO behind,
// whatever the Stdio: no fd, no goroutine.
func TestIOStreamsFailedStartLeaksNothing(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	fifo := filepath.Join(t.TempDir(), "in")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	var shared, other bytes.Buffer
	stdios := map[string]runckit.Stdio{
		"none":     {},
		"pipes":    {Stdin: pr, Stdout: &shared, Stderr: &other},
		"shared":   {Stdout: &shared, Stderr: &shared},
		"fifo-in":  {StdinPath: fifo, Stdout: &shared},
		"terminal": {Terminal: true, Stdin: pr, Stdout: &shared},
	}
	settle := func() (fds, goroutines int) {
		time.Sleep(200 * time.Millisecond)
		return openFDs(), runtime.NumGoroutine()
	}
	fds0, g0 := settle()
	for name, stdio := range stdios {
		spec := runckittest.ProcessSpec("/no/such/binary")
		p, err := c.Exec(ctx, "fail-"+name, spec, stdio)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err == nil {
			t.Fatalf("%s: exec of a missing binary started", name)
		}
		if err := p.Delete(ctx); err != nil {
			t.Fatalf("%s: Delete after a failed start: %v", name, err)
		}
		cspec := runckittest.Spec(t, "/no/such/binary")
		cspec.Process.Terminal = stdio.Terminal
		if _, err := runckit.NewContainer(ctx, newID(t), runckittest.Bundle(t, cspec),
			runckit.WithRuntimeRoot(e.root), runckit.WithStdio(stdio)); err == nil {
			t.Fatalf("%s: create with a missing binary succeeded", name)
		}
	}
	if fds, g := settle(); fds != fds0 || g > g0 {
		t.Errorf("after failed starts: %d fds (was %d), %d goroutines (was %d)", fds, fds0, g, g0)
	}
}

// slowHandoff's first Read signals that it has been entered, waits a
// little, and returns data: a CloseStdin made meanwhile races the copy of
// data the reader has already handed over.
type slowHandoff struct {
	entered chan struct{}
	data    string
	done    bool
	block   chan struct{} // later Reads wait here until closed
}

func (r *slowHandoff) Read(p []byte) (int, error) {
	if r.done {
		<-r.block
		return 0, io.EOF
	}
	r.done = true
	close(r.entered)
	time.Sleep(20 * time.Millisecond)
	return copy(p, r.data), nil
}

// CloseStdin while the copy holds data from Stdin delivers that data
// before the EOF, for a pipe and for a terminal.
func TestIOStreamsCloseStdinDeliversHeldData(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	for _, tty := range []bool{false, true} {
		name := "pipe"
		if tty {
			name = "tty"
		}
		r := &slowHandoff{entered: make(chan struct{}), data: "held\n", block: make(chan struct{})}
		spec := runckittest.ProcessSpec("cat")
		spec.Terminal = tty
		var out syncBuffer
		p, err := c.Exec(ctx, "held-"+name, spec, runckit.Stdio{Terminal: tty, Stdin: r, Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		<-r.entered
		if err := p.CloseStdin(); err != nil {
			t.Fatalf("%s: CloseStdin = %v", name, err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := p.Wait(waitCtx)
		cancel()
		close(r.block)
		if err != nil || !st.Success() {
			p.Kill(ctx, syscall.SIGKILL)
			p.Wait(ctx)
			t.Errorf("%s: Wait = %v, %v", name, st, err)
		}
		// A terminal echoes the line and cat prints it: "held" twice.
		want := 1
		if tty {
			want = 2
		}
		if got := strings.Count(out.String(), "held"); got != want {
			t.Errorf("%s: output %q has %d copies of the held line, want %d", name, out.String(), got, want)
		}
	}
}
