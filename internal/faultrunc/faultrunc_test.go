package faultrunc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// result is the outcome of one runc invocation.
type result struct {
	stdout, stderr string
	err            error
}

func run(ctx context.Context, path string, args ...string) result {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return result{stdout.String(), stderr.String(), err}
}

func realRunc(t *testing.T) string {
	path, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not found")
	}
	return path
}

// signaled reports the signal that ended the command behind err, if any.
func signaled(err error) syscall.Signal {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws := exit.Sys().(syscall.WaitStatus); ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// logTime matches the time in runc's log lines (text or JSON format).
var logTime = regexp.MustCompile(`"?time"?[=:]"[^"]*"`)

func TestPassThrough(t *testing.T) {
	rt, real := New(t), realRunc(t)
	root := t.TempDir()
	for _, args := range [][]string{
		{"--version"},
		{"--root", root, "list"},
		{"--root=" + root, "--log-format", "json", "list", "--format", "json"},
		{"--root", root, "state", "nonexistent"},
	} {
		want := run(context.Background(), real, args...)
		got := run(context.Background(), rt.Path, args...)
		// runc's error lines carry a time; two runs may be a second apart.
		got.stderr, want.stderr = logTime.ReplaceAllString(got.stderr, "time=T"), logTime.ReplaceAllString(want.stderr, "time=T")
		if got.stdout != want.stdout || got.stderr != want.stderr || exitCode(got.err) != exitCode(want.err) {
			t.Errorf("%q: got %+v, want %+v", args, got, want)
		}
	}
}

// TestPassThroughExecs checks that without a fault faultrunc replaces itself
// with the real runtime instead of running it as a child.
func TestPassThroughExecs(t *testing.T) {
	rt := New(t)
	fake := filepath.Join(t.TempDir(), "fake")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho $$ \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(build.bin, "--root", "x", "list")
	cmd.Env = append(os.Environ(), "FAULTRUNC_CONTROL="+rt.Dir, "FAULTRUNC_REAL="+fake)
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(cmd.Process.Pid) + " --root x list\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestFail(t *testing.T) {
	rt := New(t)
	rt.Set(t, "list", Fault{Action: Fail, Message: "injected failure"})
	dir := t.TempDir()
	globalLog, execLog := filepath.Join(dir, "global.json"), filepath.Join(dir, "exec.json")
	// go-runc's exec puts its per-exec log after the global one; the last
	// --log wins, as with runc.
	res := run(context.Background(), rt.Path, "--root", dir, "--log", globalLog,
		"--log-format", "json", "--log="+execLog, "list")
	if exitCode(res.err) != 1 || !strings.Contains(res.stderr, "injected failure") {
		t.Fatalf("got %+v, want exit 1 with the message on stderr", res)
	}
	if _, err := os.Stat(globalLog); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("global log written although a later --log was given: %v", err)
	}
	data, err := os.ReadFile(execLog)
	if err != nil {
		t.Fatal(err)
	}
	var line struct{ Level, Msg, Time string }
	if err := json.Unmarshal(data, &line); err != nil {
		t.Fatalf("log %q: %v", data, err)
	}
	if line.Level != "error" || line.Msg != "injected failure" || line.Time == "" {
		t.Errorf("log line %q", data)
	}

	// A --log after the subcommand counts too.
	localLog := filepath.Join(dir, "local.json")
	run(context.Background(), rt.Path, "--root", dir, "list", "--log", localLog)
	if data, err := os.ReadFile(localLog); err != nil || !bytes.Contains(data, []byte("injected failure")) {
		t.Errorf("subcommand --log: %q, %v", data, err)
	}

	rt.Clear("list")
	if res := run(context.Background(), rt.Path, "--root", dir, "list"); res.err != nil {
		t.Errorf("after Clear: %+v", res)
	}
}

func TestCrash(t *testing.T) {
	rt, real := New(t), realRunc(t)
	root := t.TempDir()
	want := run(context.Background(), real, "--root", root, "list")

	rt.Set(t, "list", Fault{Action: CrashBefore})
	res := run(context.Background(), rt.Path, "--root", root, "list")
	if signaled(res.err) != syscall.SIGKILL || res.stdout != "" {
		t.Errorf("crash-before: got %+v, want SIGKILL and no output", res)
	}

	rt.Set(t, "list", Fault{Action: CrashAfter})
	res = run(context.Background(), rt.Path, "--root", root, "list")
	if signaled(res.err) != syscall.SIGKILL || res.stdout != want.stdout {
		t.Errorf("crash-after: got %+v, want SIGKILL and output %q", res, want.stdout)
	}
}

func TestStall(t *testing.T) {
	for _, action := range []Action{Stall, StallAfter} {
		t.Run(string(action), func(t *testing.T) {
			rt, real := New(t), realRunc(t)
			root := t.TempDir()
			want := run(context.Background(), real, "--root", root, "list")
			rt.Set(t, "list", Fault{Action: action})

			done := make(chan result, 1)
			go func() { done <- run(context.Background(), rt.Path, "--root", root, "list") }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := rt.WaitStalled(ctx, "list"); err != nil {
				t.Fatal(err)
			}
			select {
			case res := <-done:
				t.Fatalf("finished while stalled: %+v", res)
			case <-time.After(50 * time.Millisecond):
			}
			rt.Release("list")
			if res := <-done; res.err != nil || res.stdout != want.stdout {
				t.Errorf("after Release: got %+v, want output %q", res, want.stdout)
			}
		})
	}
}

func TestStallCancelled(t *testing.T) {
	rt := New(t)
	rt.Set(t, "list", Fault{Action: Stall})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() { done <- run(ctx, rt.Path, "--root", t.TempDir(), "list") }()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := rt.WaitStalled(wctx, "list"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if res := <-done; signaled(res.err) != syscall.SIGKILL {
		t.Errorf("got %+v, want death by SIGKILL", res)
	}
}

func TestStallSeveral(t *testing.T) {
	rt := New(t)
	rt.Set(t, "list", Fault{Action: Stall})
	const n = 3
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() { errs <- run(context.Background(), rt.Path, "--root", t.TempDir(), "list").err })
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(rt.stalled("list")) < n {
		if time.Now().After(deadline) {
			t.Fatalf("markers %q, want %d", rt.stalled("list"), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	rt.Release("list")
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestOnce(t *testing.T) {
	rt := New(t)
	root := t.TempDir()
	rt.Set(t, "list", Fault{Action: Fail, Message: "once", Once: true})
	if res := run(context.Background(), rt.Path, "--root", root, "list"); exitCode(res.err) != 1 {
		t.Fatalf("first: got %+v, want failure", res)
	}
	if res := run(context.Background(), rt.Path, "--root", root, "list"); res.err != nil {
		t.Fatalf("second: got %+v, want success", res)
	}

	// Of concurrent invocations exactly one gets the fault.
	rt.Set(t, "list", Fault{Action: Fail, Message: "once", Once: true})
	const n = 8
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Go(func() { codes <- exitCode(run(context.Background(), rt.Path, "--root", root, "list").err) })
	}
	wg.Wait()
	close(codes)
	failed := 0
	for c := range codes {
		if c != 0 {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d of %d invocations failed, want 1", failed, n)
	}
}
