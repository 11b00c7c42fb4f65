package runckit_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// A process that writes 1 MiB and exits at once: every byte is delivered
// before Wait returns.
func TestOutputFullyCopiedBeforeWait(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	for i := 0; i < 5; i++ {
		var out bytes.Buffer
		p, err := c.Exec(ctx, "burst"+itoa(i), runckittest.ProcessSpec("head", "-c", "1048576", "/dev/zero"), runckit.Stdio{Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := p.Wait(ctx); err != nil || !st.Success() {
			t.Fatalf("Wait = %v, %v", st, err)
		}
		if out.Len() != 1<<20 {
			t.Fatalf("got %d bytes before Wait returned, want %d", out.Len(), 1<<20)
		}
	}
}

// A daemonised child keeps stdout open after the process exits: Wait gives
// up after the drain timeout with ErrDrainTimeout, and the status.
func TestDrainTimeoutBoundsWait(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithDrainTimeout(300*time.Millisecond))
	var out syncBuffer
	p, err := c.Exec(ctx, "daemon", runckittest.ProcessSpec("sh", "-c", "echo before; sleep 30 & exit 2"), runckit.Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := p.Wait(ctx)
	if !errors.Is(err, runckit.ErrDrainTimeout) || st.Code != 2 {
		t.Fatalf("Wait = %v, %v; want exit code 2 with ErrDrainTimeout", st, err)
	}
	if out.String() != "before\n" {
		t.Errorf("output = %q", out.String())
	}
	t.Logf("Wait returned %v after the exit", time.Since(start))
	if err := c.Kill(ctx, syscall.SIGKILL, runckit.KillAll()); err != nil {
		t.Fatal(err)
	}
	c.Wait(ctx)
}

func TestCloseStdinEndsCat(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	pr, pw := io.Pipe()
	defer pw.Close()
	var out syncBuffer
	p, err := c.Exec(ctx, "cat", runckittest.ProcessSpec("cat"), runckit.Stdio{Stdin: pr, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write([]byte("line\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if out.String() != "line\n" {
		t.Errorf("output = %q", out.String())
	}
}

// FIFO and file paths, as a shim gets them from containerd.
func TestFIFOAndFileStdio(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	dir := t.TempDir()
	in, out, logf := filepath.Join(dir, "stdin"), filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr.log")
	for _, f := range []string{in, out} {
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p, err := c.Exec(ctx, "fifo", runckittest.ProcessSpec("sh", "-c", "cat; echo err >&2"),
		runckit.Stdio{StdinPath: "fifo://" + in, StdoutPath: out, StderrPath: "file://" + logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		w, err := os.OpenFile(in, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		w.Write([]byte("through fifos\n"))
		w.Close()
	}()
	r, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if string(got) != "through fifos\n" {
		t.Errorf("stdout fifo = %q", got)
	}
	if data, _ := os.ReadFile(logf); string(data) != "err\n" {
		t.Errorf("stderr file = %q", data)
	}
}

// An exec whose stdin FIFO never gets a writer still ends cleanly: the
// background open is released when the process's IO is closed.
func TestFIFOStdinWithoutWriter(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	in := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(in, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := c.Exec(ctx, "nowriter", runckittest.ProcessSpec("true"), runckit.Stdio{StdinPath: in})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
}

// Resize sets the terminal's window size as the process sees it.
func TestTerminalResize(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	var out syncBuffer
	pr, pw := io.Pipe()
	defer pw.Close()
	p, err := c.Exec(ctx, "stty2", runckittest.ProcessSpec("sh", "-c", "read line; stty size"), runckit.Stdio{Terminal: true, Stdin: pr, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Resize(123, 45); err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("go\n")) // only now does the process look at its size
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if !strings.Contains(out.String(), "45 123") {
		t.Errorf("stty size printed %q, want 45 123", out.String())
	}
	// A process without a terminal can not be resized.
	q := runExec(t, ctx, c, "plain", "true")
	q.Wait(ctx)
	if err := q.Resize(80, 24); err == nil {
		t.Error("Resize of a process without a terminal succeeded")
	}
}

// The drain timeout bounds Wait for a terminal too: a daemonised child
// holding the terminal open does not keep Wait blocked.
func TestDrainTimeoutBoundsTerminalWait(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithDrainTimeout(300*time.Millisecond))
	var out syncBuffer
	p, err := c.Exec(ctx, "tdaemon", runckittest.ProcessSpec("sh", "-c", "echo before; sleep 30 & exit 2"), runckit.Stdio{Terminal: true, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The kernel hangs the terminal up when its session leader exits, so
	// the copy usually ends at once; either way Wait may not hang.
	st, err := p.Wait(waitCtx)
	if (err != nil && !errors.Is(err, runckit.ErrDrainTimeout)) || st.Code != 2 {
		t.Fatalf("Wait = %v, %v; want exit code 2, at most with ErrDrainTimeout", st, err)
	}
	if !strings.Contains(out.String(), "before") {
		t.Errorf("output = %q", out.String())
	}
	if err := c.Kill(ctx, syscall.SIGKILL, runckit.KillAll()); err != nil {
		t.Fatal(err)
	}
	c.Wait(ctx)
}
