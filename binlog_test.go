package runckit_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// loggerScript writes an executable busybox sh script into dir and returns
// its path. The script gets its query arguments as "key value" pairs; the
// prelude sets a shell variable for each and records the call in $dir/calls.
func loggerScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	script := "#!" + runckittest.BusyboxPath + " sh\n" +
		"while [ $# -gt 1 ]; do eval \"arg_$1=\\$2\"; shift 2; done\n" +
		"echo \"$$ $CONTAINER_ID $CONTAINER_NAMESPACE\" >>" + filepath.Join(dir, "calls") + "\n" +
		body + "\n"
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// copyLogger is a logger that is ready at once and copies fd 3 to $arg_out
// and fd 4 to $arg_err.
const copyLogger = `exec 5>&-
cat <&3 >"$arg_out" &
cat <&4 >"$arg_err"
wait`

func loggerURI(scheme, path string, args map[string]string) string {
	q := url.Values{}
	for k, v := range args {
		q.Set(k, v)
	}
	u := url.URL{Scheme: scheme, Path: path, RawQuery: q.Encode()}
	return u.String()
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// calls returns the lines the loggers of dir wrote on start: "pid id ns".
func loggerCalls(t *testing.T, dir string) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out [][]string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if l != "" {
			out = append(out, strings.Fields(l))
		}
	}
	return out
}

// gone waits up to 5s until pid no longer exists (reaped by us, or by
// whoever inherited it).
func gone(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// A binary:// logger named for both streams is one process that gets the
// container's stdout on fd 3 and stderr on fd 4, the URI's query as
// arguments and CONTAINER_ID/CONTAINER_NAMESPACE; everything the container
// wrote is in its files once Wait returns, and the logger has been reaped.
func TestBinaryLogInitOutput(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	dir := t.TempDir()
	bin := loggerScript(t, dir, "logger", `echo "$arg_out $arg_err $arg_flag" >`+filepath.Join(dir, "args")+"\n"+copyLogger)
	out, errf := filepath.Join(dir, "out"), filepath.Join(dir, "err")
	uri := loggerURI("binary", bin, map[string]string{"out": out, "err": errf, "flag": "x y"})
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "echo out1; echo err1 >&2; i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; exit 3"),
		runckit.WithStdio(runckit.Stdio{StdoutPath: uri, StderrPath: uri, LogNamespace: "ns1"}))
	calls := loggerCalls(t, dir)
	if len(calls) != 1 {
		t.Fatalf("loggers started before Start: %v; want one, ready before create returns", calls)
	}
	if calls[0][1] != c.ID() || len(calls[0]) != 3 || calls[0][2] != "ns1" {
		t.Errorf("logger env: %v; want CONTAINER_ID %s, CONTAINER_NAMESPACE ns1", calls[0], c.ID())
	}
	if got := readFile(t, filepath.Join(dir, "args")); got != out+" "+errf+" x y\n" {
		t.Errorf("logger args gave %q", got)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil || st.Code != 3 {
		t.Fatalf("Wait = %v, %v; want exit 3", st, err)
	}
	var want strings.Builder
	want.WriteString("out1\n")
	for i := 0; i < 2000; i++ {
		want.WriteString("line" + strconv.Itoa(i) + "\n")
	}
	if got := readFile(t, out); got != want.String() {
		t.Errorf("stdout file: %d bytes, want %d (head %q)", len(got), want.Len(), got[:min(len(got), 40)])
	}
	if got := readFile(t, errf); got != "err1\n" {
		t.Errorf("stderr file = %q, want %q", got, "err1\n")
	}
	pid, _ := strconv.Atoi(calls[0][0])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("logger %d still exists after Wait: %v", pid, err)
	}
}

// Two URIs start two loggers, each with its stream on its fd and /dev/null
// on the other; an exec's logger gets the container's ID, or LogID.
func TestBinaryLogExecTwoLoggers(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	dir := t.TempDir()
	bin := loggerScript(t, dir, "logger", copyLogger)
	f := func(n string) string { return filepath.Join(dir, n) }
	s := runckit.Stdio{
		StdoutPath: loggerURI("binary", bin, map[string]string{"out": f("a.out"), "err": f("a.err")}),
		StderrPath: loggerURI("binary", bin, map[string]string{"out": f("b.out"), "err": f("b.err")}),
	}
	p := startExec(t, ctx, c, "logged", runckittest.ProcessSpec("sh", "-c", "echo to-out; echo to-err >&2"), s)
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	for name, want := range map[string]string{"a.out": "to-out\n", "a.err": "", "b.out": "", "b.err": "to-err\n"} {
		if got := readFile(t, f(name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	calls := loggerCalls(t, dir)
	if len(calls) != 2 {
		t.Fatalf("loggers started: %v, want 2", calls)
	}
	for _, call := range calls {
		if call[1] != c.ID() || len(call) != 2 {
			t.Errorf("exec logger env %v: want CONTAINER_ID %s and an empty namespace", call, c.ID())
		}
	}

	// LogID names the process to the logger instead, as containerd's runc
	// shim names an exec.
	s = runckit.Stdio{StdoutPath: loggerURI("binary", bin, map[string]string{"out": f("c.out"), "err": f("c.err")}), LogID: "exec-7", LogNamespace: "ns7"}
	p = startExec(t, ctx, c, "logged-id", runckittest.ProcessSpec("echo", "hi"), s)
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if calls := loggerCalls(t, dir); len(calls) != 3 || len(calls[2]) != 3 || calls[2][1] != "exec-7" || calls[2][2] != "ns7" {
		t.Errorf("loggers started: %v; want a third with CONTAINER_ID exec-7, CONTAINER_NAMESPACE ns7", calls)
	}
	if got := readFile(t, f("c.out")); got != "hi\n" {
		t.Errorf("c.out = %q", got)
	}
}

// A logger that can not start or is never ready fails create and exec with
// the kind binlog.go documents, and leaves nothing: no runc state, no fd,
// no goroutine, no logger process or child of it.
func TestBinaryLogFailuresLeaveNothing(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	sleeper := e.sleeper(ctx)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-exec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, uri string
		ctxTime   time.Duration
		check     func(error) bool
		want      string
	}{
		{"missing", "binary:///no/such/logger?a=b", 0, errdefs.IsNotFound, "NotFound"},
		{"not-executable", "binary://" + notExec, 0, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"directory", "binary://" + dir, 0, errdefs.IsInvalidArgument, "InvalidArgument"},
		{"exits-before-ready", "binary://" + loggerScript(t, dir, "exits", "exit 7"), 0, errdefs.IsUnavailable, "Unavailable"},
		{"crashes-before-ready", "binary://" + loggerScript(t, dir, "crashes", "kill -SEGV $$"), 0, errdefs.IsUnavailable, "Unavailable"},
		{"v2-closes-without-byte", "binary-v2://" + loggerScript(t, dir, "v2", "exec 5>&-; sleep 100"), 0, errdefs.IsUnavailable, "Unavailable"},
		{"never-ready", "binary://" + loggerScript(t, dir, "stuck", "sleep 9137 & wait"), 500 * time.Millisecond,
			func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }, "DeadlineExceeded"},
	}
	settle := func() (fds, goroutines int) {
		time.Sleep(200 * time.Millisecond)
		return openFDs(), runtime.NumGoroutine()
	}
	fds0, g0 := settle()
	for _, tc := range cases {
		for _, exec := range []bool{false, true} {
			before := len(loggerCalls(t, dir))
			cctx, cancel := ctx, context.CancelFunc(func() {})
			if tc.ctxTime > 0 {
				cctx, cancel = context.WithTimeout(ctx, tc.ctxTime)
			}
			s := runckit.Stdio{StdoutPath: tc.uri, StderrPath: tc.uri}
			var err error
			start := time.Now()
			if exec {
				var p *runckit.Process
				// A logger that is not there is refused at once; one
				// that fails to run, at Start.
				p, err = sleeper.Exec(ctx, "bad-"+tc.name, runckittest.ProcessSpec("echo", "hi"), s)
				if err == nil {
					err = p.Start(cctx)
					if derr := p.Delete(ctx); derr != nil {
						t.Errorf("%s: delete the exec: %v", tc.name, derr)
					}
				}
			} else {
				id := newID(t)
				_, err = runckit.NewContainer(cctx, id, runckittest.Bundle(t, runckittest.Spec(t, "echo", "hi")),
					runckit.WithRuntimeRoot(e.root), runckit.WithStdio(s))
				if _, serr := os.Stat(filepath.Join(e.root, id)); !os.IsNotExist(serr) {
					t.Errorf("%s: runc state left for %s: %v", tc.name, id, serr)
				}
			}
			cancel()
			took := time.Since(start)
			if !tc.check(err) {
				t.Errorf("%s (exec %v): %v; want %s", tc.name, exec, err, tc.want)
			} else {
				t.Logf("%s (exec %v) after %v: %v", tc.name, exec, took.Round(time.Millisecond), err)
			}
			for _, call := range loggerCalls(t, dir)[before:] {
				pid, _ := strconv.Atoi(call[0])
				if !gone(pid) {
					t.Errorf("%s: logger %d still exists", tc.name, pid)
				}
			}
		}
	}
	// A logger removed between the exec's reservation and its start.
	removed := loggerScript(t, dir, "removed", copyLogger)
	p, err := sleeper.Exec(ctx, "removed", runckittest.ProcessSpec("echo", "hi"), runckit.Stdio{StdoutPath: "binary://" + removed})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(removed)
	if err := p.Start(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("start with the logger removed: %v; want NotFound", err)
	}
	if err := p.Delete(ctx); err != nil {
		t.Errorf("delete the exec: %v", err)
	}

	// With a terminal: the logger for StdoutPath starts, then StdinPath
	// can not be opened; the start fails and the logger is ended.
	before := len(loggerCalls(t, dir))
	tty := runckittest.ProcessSpec("echo", "hi")
	tty.Terminal = true
	p, err = sleeper.Exec(ctx, "tty-bad-stdin", tty, runckit.Stdio{Terminal: true,
		StdinPath: filepath.Join(dir, "no-such-input"), StdoutPath: loggerURI("binary", loggerScript(t, dir, "tty-logger", copyLogger), map[string]string{"out": filepath.Join(dir, "tty.out"), "err": filepath.Join(dir, "tty.err")})})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("terminal exec with a missing StdinPath: %v; want NotFound", err)
	}
	if err := p.Delete(ctx); err != nil {
		t.Errorf("delete the exec: %v", err)
	}
	calls := loggerCalls(t, dir)[before:]
	if len(calls) != 1 {
		t.Errorf("loggers started for the terminal exec: %v; want 1", calls)
	}
	for _, call := range calls {
		if pid, _ := strconv.Atoi(call[0]); !gone(pid) {
			t.Errorf("terminal exec's logger %d still exists", pid)
		}
	}

	// The stuck loggers' sleeps were in their groups: gone with them.
	if out := stillRunning("sleep 9137"); out != "" {
		t.Errorf("a logger's child is still running: %s", out)
	}
	if fds, g := settle(); fds != fds0 || g > g0 {
		t.Errorf("after failed loggers: %d fds (was %d), %d goroutines (was %d)", fds, fds0, g, g0)
	}
	if z := zombieChildren(); len(z) > 0 {
		t.Errorf("zombie children: %v", z)
	}
}

// A logger that does not exit when its streams end is ended at the drain
// timeout: Wait returns ErrDrainTimeout with the exit status once the
// logger is reaped, within the drain timeout plus the SIGTERM grace.
func TestBinaryLogDrainTimeoutEndsLogger(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	dir := t.TempDir()
	// Ignores SIGTERM (and so do its children), so only SIGKILL ends it.
	bin := loggerScript(t, dir, "logger", "trap '' TERM\nexec 5>&-\ncat <&3 >\"$arg_out\"\nsleep 9138 & wait")
	out := filepath.Join(dir, "out")
	const drain = 300 * time.Millisecond
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "echo bye; exit 2"),
		runckit.WithDrainTimeout(drain), runckit.WithStdio(runckit.Stdio{StdoutPath: loggerURI("binary", bin, map[string]string{"out": out})}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := c.Wait(ctx)
	took := time.Since(start)
	if !errors.Is(err, runckit.ErrDrainTimeout) || st.Code != 2 {
		t.Fatalf("Wait = %v, %v after %v; want exit 2 with ErrDrainTimeout", st, err, took)
	}
	if took > drain+5*time.Second {
		t.Errorf("Wait took %v", took)
	}
	t.Logf("Wait returned after %v", took)
	if got := readFile(t, out); got != "bye\n" {
		t.Errorf("out = %q", got)
	}
	calls := loggerCalls(t, dir)
	if len(calls) != 1 {
		t.Fatalf("calls %v", calls)
	}
	pid, _ := strconv.Atoi(calls[0][0])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("logger %d still exists after Wait: %v", pid, err)
	}
	if out := stillRunning("sleep 9138"); out != "" {
		t.Errorf("the logger's child is still running: %s", out)
	}
}

// stillRunning waits up to 5s (a killed process takes a moment to die) for
// no process to run cmdline, and returns those that still do.
func stillRunning(cmdline string) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := findRunning(cmdline)
		if out == "" || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findRunning lists processes whose command line is exactly cmdline, this
// test's loggers' children being the only ones expected.
func findRunning(cmdline string) (string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return "", err
	}
	var found []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ") == cmdline {
			stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
				continue // a zombie is not running
			}
			found = append(found, strconv.Itoa(pid))
		}
	}
	return strings.Join(found, " "), nil
}

// A stream path that can not be opened fails create and exec with an error,
// and closes what was opened before it (stdin here). It used to panic: the
// cleanup ran on the nil the error return had put in its named result.
func TestStdioPathOpenFailureCleansUp(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	s := runckit.Stdio{Stdin: strings.NewReader("x"), StdoutPath: "/dev/null", StderrPath: filepath.Join(t.TempDir(), "no", "such", "dir")}
	id := newID(t)
	_, err := runckit.NewContainer(ctx, id, runckittest.Bundle(t, runckittest.Spec(t, "true")),
		runckit.WithRuntimeRoot(e.root), runckit.WithStdio(s))
	if !errors.Is(err, os.ErrNotExist) || !errdefs.IsNotFound(err) {
		t.Errorf("create with a stderr path in a missing directory: %v; want a not-exist error of kind NotFound", err)
	}
	p, err := c.Exec(ctx, "bad-path", runckittest.ProcessSpec("true"), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); !errors.Is(err, os.ErrNotExist) || !errdefs.IsNotFound(err) {
		t.Errorf("exec with a stderr path in a missing directory: %v; want a not-exist error of kind NotFound", err)
	}
}

// A terminal's output goes to the path StdoutPath names as well as to a
// writer: a logging binary gets it on fd 3 (and /dev/null on fd 4, a
// terminal having one stream), a file gets it appended; its input comes
// from the FIFO or file StdinPath names. The logger is reaped by Wait.
func TestTerminalToPaths(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	dir := t.TempDir()
	f := func(n string) string { return filepath.Join(dir, n) }
	bin := loggerScript(t, dir, "logger", copyLogger)
	if err := syscall.Mkfifo(f("in"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startExec(t, ctx, c, "tty-logged", runckittest.ProcessSpec("sh", "-c", "read line; echo got:$line; [ -t 1 ] && echo is-a-tty"), runckit.Stdio{
		Terminal:   true,
		StdinPath:  "fifo://" + f("in"),
		StdoutPath: loggerURI("binary", bin, map[string]string{"out": f("a.out"), "err": f("a.err")}),
	})
	w, err := os.OpenFile(f("in"), os.O_WRONLY, 0) // waits for runckit's reader
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello\n"))
	w.Close()
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if got := readFile(t, f("a.out")); !strings.Contains(got, "got:hello") || !strings.Contains(got, "is-a-tty") {
		t.Errorf("logger's fd 3 got %q; want the terminal's output", got)
	}
	if got := readFile(t, f("a.err")); got != "" {
		t.Errorf("logger's fd 4 got %q; want nothing", got)
	}
	calls := loggerCalls(t, dir)
	if len(calls) != 1 {
		t.Fatalf("loggers started: %v, want 1", calls)
	}
	if pid, _ := strconv.Atoi(calls[0][0]); !gone(pid) {
		t.Errorf("logger %d still exists after Wait", pid)
	}

	// A file for each side.
	if err := os.WriteFile(f("in.txt"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p = startExec(t, ctx, c, "tty-files", runckittest.ProcessSpec("sh", "-c", "read line; echo got:$line"), runckit.Stdio{
		Terminal: true, StdinPath: f("in.txt"), StdoutPath: "file://" + f("out.txt"),
	})
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if got := readFile(t, f("out.txt")); !strings.Contains(got, "got:from-file") {
		t.Errorf("out.txt = %q", got)
	}
}
