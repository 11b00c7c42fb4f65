package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The suite's fixed paths (integration/client/client_unix.go).
const (
	suiteState  = "/run/containerd-test"
	suiteRoot   = "/var/lib/containerd-test"
	suiteSocket = suiteState + "/containerd.sock"
)

// listTests asks the test binary for its top-level tests matching run.
// -test.short makes TestMain skip the daemon and the seed pull.
func listTests(t *tools, run string) ([]string, error) {
	if run == "" {
		run = "."
	}
	cmd := exec.Command(filepath.Join(t.bin, "client.test"), "-test.short", "-test.list", run)
	cmd.Dir = t.pkgDir
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("client.test -test.list: %w", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Test") || strings.HasPrefix(l, "Fuzz") || strings.HasPrefix(l, "Example") {
			names = append(names, strings.TrimSpace(l))
		}
	}
	sort.Strings(names)
	return names, nil
}

// trackingCgroup makes a cgroup that holds the test binary and everything
// it starts (containerd, shims), so what outlives a round can be found by
// pid. Containers move to cgroups of their own; they are found by bundle.
func trackingCgroup() string {
	for _, base := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue
		}
		dir := filepath.Join(base, fmt.Sprintf("runckit-conformance-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err == nil || os.IsExist(err) {
			return dir
		}
	}
	say("warning: no cgroup to track the test's processes in; a crashed round's leftovers can not be found")
	return ""
}

func cgroupPids(cg string) []int {
	if cg == "" {
		return nil
	}
	b, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// runInCgroup is the re-exec entry: join the cgroup, then become the
// command, so the test binary is tracked from its first instruction.
func runInCgroup(args []string) {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: in-cgroup <cgroup dir|-> <binary> [args...]")
		os.Exit(2)
	}
	if args[0] != "-" {
		if err := os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "join cgroup:", err)
			os.Exit(2)
		}
	}
	err := syscall.Exec(args[1], args[1:], os.Environ())
	fmt.Fprintln(os.Stderr, "exec:", err)
	os.Exit(2)
}

// sweep stops what a round left behind: the processes in its cgroup, the
// runc containers whose bundles lie in the suite's state dir or the run's
// TMPDIR (only this run's), and their mounts.
func sweep(cg, tmp string) {
	if pids := cgroupPids(cg); len(pids) > 0 {
		say("stopping %d processes the round left: %v", len(pids), pids)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGTERM)
		}
		for i := 0; i < 20 && len(cgroupPids(cg)) > 0; i++ {
			time.Sleep(250 * time.Millisecond)
		}
		for _, p := range cgroupPids(cg) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		for i := 0; i < 20 && len(cgroupPids(cg)) > 0; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	ours := func(p string) bool {
		return strings.HasPrefix(p, suiteState+"/") || strings.HasPrefix(p, tmp+"/")
	}
	if runc, err := exec.LookPath("runc"); err == nil {
		roots, _ := filepath.Glob("/run/containerd/runc/*")
		for _, root := range roots {
			out, _ := exec.Command(runc, "--root", root, "list", "--format", "json").Output()
			var list []struct {
				ID     string `json:"id"`
				Bundle string `json:"bundle"`
			}
			_ = json.Unmarshal(out, &list)
			for _, c := range list {
				if ours(c.Bundle) {
					say("deleting leftover container %s (bundle %s)", c.ID, c.Bundle)
					_ = exec.Command(runc, "--root", root, "delete", "-f", c.ID).Run()
				}
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (ours(f[4]) || strings.HasPrefix(f[4], suiteRoot+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if syscall.Unmount(m, syscall.MNT_DETACH) == nil {
			say("unmounted leftover %s", m)
		}
	}
}

// clearTaskState removes the task bundles a killed earlier run left in the
// suite's fixed dirs (sweep has unmounted their rootfs): containerd would
// take them up as dead shims when the suite starts it, and a stale bundle
// made by another shim can fail the suite's TestMain before any test runs.
func clearTaskState() {
	for _, dir := range []string{suiteState, suiteRoot} {
		d := filepath.Join(dir, "io.containerd.runtime.v2.task")
		if bundles, _ := filepath.Glob(filepath.Join(d, "*", "*")); len(bundles) > 0 {
			say("removing %d task bundles a killed earlier run left in %s", len(bundles), d)
		}
		_ = os.RemoveAll(d)
	}
}

// roundResult says how a round's test binary ended.
type roundResult struct {
	exitCode int
	stalled  bool
	err      error
}

// runRound runs the test binary once, its output (stdout and stderr on one
// pipe, so test2json framing stays in order) into log and through
// `go tool test2json` into t. The watchdog sends SIGQUIT (a goroutine
// dump, then exit) when there has been no output for stall.
func runRound(cfg *config, t *tools, tl *tally, cg string, args, env []string, logFile string, quiet bool) roundResult {
	lf, err := os.Create(logFile)
	if err != nil {
		return roundResult{err: err}
	}
	defer lf.Close()
	self, err := os.Executable()
	if err != nil {
		return roundResult{err: err}
	}
	cgArg := cg
	if cgArg == "" {
		cgArg = "-"
	}
	cmd := exec.Command(self, append([]string{"in-cgroup", cgArg, filepath.Join(t.bin, "client.test")}, args...)...)
	cmd.Dir = t.pkgDir // the migration tests read testdata/ relative to the package
	cmd.Env = env
	pr, pw, err := os.Pipe()
	if err != nil {
		return roundResult{err: err}
	}
	cmd.Stdout, cmd.Stderr, cmd.Stdin = pw, pw, nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	conv := exec.Command("go", "tool", "test2json", "-p", "integration/client")
	convIn, err := conv.StdinPipe()
	if err != nil {
		return roundResult{err: err}
	}
	convOut, err := conv.StdoutPipe()
	if err != nil {
		return roundResult{err: err}
	}
	conv.Stderr = os.Stderr
	if err := conv.Start(); err != nil {
		return roundResult{err: fmt.Errorf("go tool test2json: %w", err)}
	}
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		convIn.Close()
		_ = conv.Wait()
		return roundResult{err: err}
	}
	pw.Close()

	var lastOutput atomic.Int64
	lastOutput.Store(time.Now().UnixNano())
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		buf := make([]byte, 64<<10)
		for {
			n, err := pr.Read(buf)
			if n > 0 {
				lastOutput.Store(time.Now().UnixNano())
				_, _ = lf.Write(buf[:n])
				_, _ = convIn.Write(buf[:n])
			}
			if err != nil {
				convIn.Close()
				return
			}
		}
	}()
	parsed := make(chan error, 1)
	go func() {
		parsed <- tl.readEvents(convOut, func(r *testRecord) {
			if !quiet {
				fmt.Fprintf(os.Stderr, "--- %s: %s (%.1fs)\n", r.Result, r.Name, r.Seconds)
			}
		})
	}()

	var stalled atomic.Bool
	stopDog := make(chan struct{})
	go func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopDog:
				return
			case <-tick.C:
				if idle := time.Since(time.Unix(0, lastOutput.Load())); idle >= cfg.stall {
					say("no test output for %s: sending SIGQUIT to the test binary (its goroutine dump goes to %s)", idle.Round(time.Second), logFile)
					stalled.Store(true)
					_ = cmd.Process.Signal(syscall.SIGQUIT)
					return
				}
			}
		}
	}()
	waitErr := cmd.Wait()
	close(stopDog)
	// Children of the binary (containerd, shims) may hold the pipe open;
	// sweep first so the reader sees EOF.
	sweep(cg, cfg.tmp)
	select {
	case <-copied:
	case <-time.After(30 * time.Second):
		say("warning: test output pipe still open 30s after the binary exited")
		pr.Close()
		<-copied
	}
	pr.Close()
	perr := <-parsed
	_ = conv.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		code = ee.ExitCode()
	} else if waitErr != nil {
		return roundResult{err: waitErr}
	}
	return roundResult{exitCode: code, stalled: stalled.Load(), err: perr}
}

// tailOf returns the last n lines of a file.
func tailOf(file string, n int) string {
	b, _ := os.ReadFile(file)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// countLines counts the lines of a file matching re (registry log).
func countLines(file string, re *regexp.Regexp) int {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if re.Match(sc.Bytes()) {
			n++
		}
	}
	return n
}
