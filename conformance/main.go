// Command conformance runs containerd's own integration test suite
// (integration/client of github.com/containerd/containerd/v2) against any
// containerd shim and any containerd version, offline, on one Linux
// machine, as root. `make conformance` at the repository root builds and
// runs it; see shim/README.md.
//
// What it does, in order:
//   - takes the lock LOCK_FILE for the whole run (the suite binds fixed
//     paths, /run/containerd-test and 127.0.0.1:443, so one run at a time);
//   - installs containerd, ctr and containerd-shim-runc-v2 at CTRD_VERSION
//     with go install, and builds the integration/client test binary and
//     the runc-fp failpoint wrapper from the same module source;
//   - builds the images the suite pulls from a static busybox, in memory,
//     as multi-platform OCI indexes, and serves them read-only over TLS on
//     127.0.0.1:443 with a throwaway CA that only the test processes trust
//     (SSL_CERT_FILE; the system trust store is not touched);
//   - points the registry host names at 127.0.0.1 in /etc/hosts for the
//     run and restores the file afterwards, also on SIGINT/SIGTERM;
//   - runs the test binary with -test.root (without it TestMain runs
//     nothing) and TEST_RUNTIME, with a stall watchdog: after STALL_TIMEOUT
//     without output it sends SIGQUIT, counts the running test as hung (a
//     failure) and starts another round for the tests that did not run;
//   - after each round stops what the round left (processes in its cgroup,
//     runc containers of the suite's bundles, their mounts);
//   - prints `CONFORMANCE: pass=N fail=N skip=N` over top-level tests and
//     writes a TSV with one row per test and subtest.
//
// Exit status: 0 when the suite ran (and, with EXPECT_FILE, nothing outside
// the file failed or skipped); 1 when a test outside EXPECT_FILE failed,
// hung or skipped; 2 when the harness failed or no test ran.
//
// Settings are environment variables; see usage below.
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const usage = `conformance: containerd's integration/client suite against any shim (run as root).

Environment:
  SHIM           path of a shim binary containerd-shim-<name>-<version>; its
                 directory goes first on the suite's PATH
  TEST_RUNTIME   runtime the suite uses (default from SHIM's name:
                 io.containerd.<name>.<version>); without SHIM the shim is
                 looked up in the containerd install dir, then PATH, e.g.
                 io.containerd.runc.v2 for containerd's own runc shim
  CTRD_VERSION   containerd version of daemon, ctr, runc shim and tests (v2.4.2)
  EXPECT_FILE    files (space or colon separated) of top-level tests, or
                 path.Match patterns, that may fail or skip, one a line,
                 "# comments"; with it a test outside them that fails, hangs
                 or skips makes the exit status 1
  TEST_RUN       -test.run regexp (default: all tests)
  TEST_SKIP      -test.skip regexp of top-level tests
  TEST_ARGS      more flags for the test binary, e.g. -no-shim-cgroup
  TEST_TIMEOUT   -test.timeout of one round (50m)
  STALL_TIMEOUT  seconds without test output before the binary is sent SIGQUIT
                 as hung (300)
  MAX_ROUNDS     rounds after hangs or crashes, each running what did not run (4)
  RETRY_FAILED   with EXPECT_FILE: rerun the unexpected failures once, alone;
                 one that passes then is reported as CONFORMANCE-FLAKY and
                 does not fail the run (1; 0 turns it off). The counts in
                 the CONFORMANCE line are always the first run's.
  CRIU           1: let the checkpoint tests use criu; 0: pass -no-criu (0)
  BUSYBOX        static busybox the images are built from (/bin/busybox)
  CONFORMANCE_DIR  work dir: binaries, logs, results (/tmp/runckit-conformance)
  LOCK_FILE      lock held for the whole run (/tmp/rk-c8d-suite.lock)
  QUIET          1: do not print each test's result as it finishes
`

type config struct {
	shim, runtime, version string
	expectFiles            []string
	run, skip              string
	testArgs               []string
	timeout                string
	stall                  time.Duration
	maxRounds              int
	retryFailed            bool
	criu                   bool
	busybox, work, lock    string
	quiet                  bool
	tmp                    string
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func say(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "conformance: "+format+"\n", a...)
}

func loadConfig() (*config, error) {
	c := &config{
		shim: os.Getenv("SHIM"), runtime: os.Getenv("TEST_RUNTIME"), version: env("CTRD_VERSION", "v2.4.2"),
		run: os.Getenv("TEST_RUN"), skip: os.Getenv("TEST_SKIP"), testArgs: strings.Fields(os.Getenv("TEST_ARGS")),
		timeout: env("TEST_TIMEOUT", "50m"), criu: os.Getenv("CRIU") == "1",
		busybox: env("BUSYBOX", "/bin/busybox"), work: env("CONFORMANCE_DIR", "/tmp/runckit-conformance"),
		lock: env("LOCK_FILE", "/tmp/rk-c8d-suite.lock"), quiet: os.Getenv("QUIET") == "1",
	}
	c.expectFiles = strings.FieldsFunc(os.Getenv("EXPECT_FILE"), func(r rune) bool { return r == ':' || r == ' ' || r == '\t' || r == '\n' })
	stall, err := strconv.Atoi(env("STALL_TIMEOUT", "300"))
	if err != nil || stall < 10 {
		return nil, fmt.Errorf("STALL_TIMEOUT=%q: want seconds, at least 10", os.Getenv("STALL_TIMEOUT"))
	}
	c.stall = time.Duration(stall) * time.Second
	if c.maxRounds, err = strconv.Atoi(env("MAX_ROUNDS", "4")); err != nil || c.maxRounds < 1 {
		return nil, fmt.Errorf("MAX_ROUNDS=%q: want a positive number", os.Getenv("MAX_ROUNDS"))
	}
	c.retryFailed = env("RETRY_FAILED", "1") != "0"
	if c.work, err = filepath.Abs(c.work); err != nil {
		return nil, err
	}
	c.tmp = filepath.Join(c.work, "tmp")
	return c, nil
}

// shimName maps a runtime name to its binary as containerd does:
// io.containerd.<name>.<version> -> containerd-shim-<name>-<version>.
func shimName(runtime string) (string, error) {
	f := strings.Split(runtime, ".")
	if len(f) < 3 {
		return "", fmt.Errorf("runtime %q is not of the form io.containerd.<name>.<version>", runtime)
	}
	return "containerd-shim-" + f[len(f)-2] + "-" + f[len(f)-1], nil
}

// runtimeOf is the inverse, from a binary name.
func runtimeOf(bin string) (string, error) {
	base := filepath.Base(bin)
	rest, ok := strings.CutPrefix(base, "containerd-shim-")
	i := strings.LastIndex(rest, "-")
	if !ok || i <= 0 || i == len(rest)-1 {
		return "", fmt.Errorf("SHIM %s: the binary must be named containerd-shim-<name>-<version> (or set TEST_RUNTIME)", bin)
	}
	return "io.containerd." + rest[:i] + "." + rest[i+1:], nil
}

// resolveShim settles the runtime name and the directory that must come
// first on PATH, and checks that containerd will find the binary there.
func resolveShim(c *config, t *tools) (shimPath, shimDir string, err error) {
	if c.shim == "" && c.runtime == "" {
		return "", "", errors.New("set SHIM (a shim binary) or TEST_RUNTIME (e.g. io.containerd.runc.v2)")
	}
	if c.shim != "" {
		if shimPath, err = filepath.Abs(c.shim); err != nil {
			return "", "", err
		}
		if st, err := os.Stat(shimPath); err != nil || st.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("SHIM %s is not an executable file", c.shim)
		}
		if c.runtime == "" {
			if c.runtime, err = runtimeOf(shimPath); err != nil {
				return "", "", err
			}
		}
		want, err := shimName(c.runtime)
		if err != nil {
			return "", "", err
		}
		if want != filepath.Base(shimPath) {
			return "", "", fmt.Errorf("containerd looks for %s for runtime %s, but SHIM is %s", want, c.runtime, shimPath)
		}
		return shimPath, filepath.Dir(shimPath), nil
	}
	want, err := shimName(c.runtime)
	if err != nil {
		return "", "", err
	}
	for _, d := range append([]string{t.bin}, filepath.SplitList(os.Getenv("PATH"))...) {
		p := filepath.Join(d, want)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, d, nil
		}
	}
	return "", "", fmt.Errorf("no %s for runtime %s in %s or on PATH (set SHIM)", want, c.runtime, t.bin)
}

// cleanups run once, on return or on a signal. cleaningUp is held while
// they run, so main can not exit halfway through the signal handler's
// cleanup (leaving /etc/hosts edited); interrupted says which signal came.
var (
	cleanupMu   sync.Mutex
	cleanups    []func()
	cleaningUp  sync.Mutex
	interrupted atomic.Int32
)

func atCleanup(f func()) {
	cleanupMu.Lock()
	cleanups = append(cleanups, f)
	cleanupMu.Unlock()
}

func runCleanups() {
	cleaningUp.Lock()
	defer cleaningUp.Unlock()
	cleanupMu.Lock()
	fs := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "in-cgroup" {
		runInCgroup(os.Args[2:])
		return
	}
	if len(os.Args) > 1 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		say("%v: cleaning up", s)
		interrupted.Store(int32(s.(syscall.Signal)))
		runCleanups()
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	code := run()
	runCleanups()
	if s := interrupted.Load(); s != 0 {
		os.Exit(128 + int(s))
	}
	os.Exit(code)
}

func run() int {
	start := time.Now()
	c, err := loadConfig()
	if err != nil {
		say("%v", err)
		return 2
	}
	if os.Geteuid() != 0 {
		say("must run as root: the suite creates containers, mounts and cgroups")
		return 2
	}
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		say("%v", err)
		return 2
	}
	exp, err := readExpectations(c.expectFiles)
	if err != nil {
		say("EXPECT_FILE: %v", err)
		return 2
	}

	lf, err := os.OpenFile(c.lock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		say("lock: %v", err)
		return 2
	}
	if syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		say("waiting for %s (another run of the suite holds it)", c.lock)
		if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
			say("lock: %v", err)
			return 2
		}
	}
	atCleanup(func() { lf.Close() })

	t, err := buildTools(c.work, c.version)
	if err != nil {
		say("%v", err)
		return 2
	}
	shimPath, shimDir, err := resolveShim(c, t)
	if err != nil {
		say("%v", err)
		return 2
	}
	if conn, err := net.DialTimeout("unix", suiteSocket, time.Second); err == nil {
		conn.Close()
		say("something answers on %s (a containerd left by an earlier run?); stop it first", suiteSocket)
		return 2
	}

	tag := regexp.MustCompile(`[^A-Za-z0-9._-]`).ReplaceAllString(c.runtime, "_") + "-" + c.version
	out := filepath.Join(c.work, tag)
	if err := os.MkdirAll(out, 0o755); err != nil {
		say("%v", err)
		return 2
	}
	regLog := filepath.Join(out, "registry.log")
	srv, caFile, reg, err := serveRegistry("127.0.0.1:443", c.busybox, filepath.Join(c.work, "certs"), regLog)
	if err != nil {
		say("%v", err)
		return 2
	}
	atCleanup(func() { _ = srv.Close() })
	hosts, err := pointAtLoopback("/etc/hosts", registryHosts())
	if err != nil {
		say("/etc/hosts: %v", err)
		return 2
	}
	atCleanup(hosts.restore)
	if err := checkRegistry(caFile, registryHosts()); err != nil {
		say("the local registry does not answer as containerd will ask: %v", err)
		return 2
	}
	say("images served on https://127.0.0.1:443 for %s", strings.Join(registryHosts(), " "))

	listed, err := listTests(t, c.run)
	if err != nil || len(listed) == 0 {
		say("no tests match TEST_RUN=%q (%v)", c.run, err)
		return 2
	}
	say("containerd %s, runtime %s -> %s, %d top-level tests", c.version, c.runtime, shimPath, len(listed))

	cg := trackingCgroup()
	if cg != "" {
		atCleanup(func() { sweep(cg, c.tmp); _ = os.Remove(cg) })
	}
	sweep(cg, c.tmp) // what a killed earlier run may have left
	clearTaskState()
	_ = os.RemoveAll(c.tmp)
	if err := os.MkdirAll(c.tmp, 0o755); err != nil {
		say("%v", err)
		return 2
	}

	certDir := filepath.Dir(caFile)
	testEnv := []string{
		"PATH=" + strings.Join(uniq([]string{shimDir, t.bin, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}), ":"),
		"TEST_RUNTIME=" + c.runtime, "TMPDIR=" + c.tmp,
		"SSL_CERT_FILE=" + caFile, "SSL_CERT_DIR=" + certDir,
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "PATH", "TEST_RUNTIME", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		}
		testEnv = append(testEnv, kv)
	}
	base := []string{"-test.v=test2json", "-test.root", "-test.timeout", c.timeout}
	if !c.criu {
		base = append(base, "-no-criu")
	}
	if c.run != "" {
		base = append(base, "-test.run", c.run)
	}
	base = append(base, c.testArgs...)

	tl := newTally()
	done := map[string]bool{}
	rounds := 0
	for round := 1; round <= c.maxRounds; round++ {
		rounds = round
		tl.round = round
		args := append([]string(nil), base...)
		var skips []string
		for n := range done {
			skips = append(skips, regexp.QuoteMeta(n))
		}
		switch {
		case len(skips) > 0 && c.skip != "":
			args = append(args, "-test.skip", "("+c.skip+")|^("+strings.Join(skips, "|")+")$")
		case len(skips) > 0:
			args = append(args, "-test.skip", "^("+strings.Join(skips, "|")+")$")
		case c.skip != "":
			args = append(args, "-test.skip", c.skip)
		}
		logFile := filepath.Join(out, fmt.Sprintf("round%d.log", round))
		say("round %d: TEST_RUNTIME=%s client.test %s%s; log %s", round, c.runtime, strings.Join(base, " "),
			map[bool]string{true: fmt.Sprintf(" -test.skip <%d tests that ran>", len(skips))}[len(skips) > 0], logFile)
		t0 := time.Now()
		rr := runRound(c, t, tl, cg, args, testEnv, logFile, c.quiet)
		tl.endRound()
		if interrupted.Load() != 0 {
			return 2
		}
		if rr.err != nil {
			say("round %d: %v", round, rr.err)
			return 2
		}
		before := len(done)
		for _, r := range tl.topLevel() {
			done[r.Name] = true
		}
		left := 0
		for _, n := range listed {
			if !done[n] {
				left++
			}
		}
		say("round %d: test binary exited %d after %s%s; %d tests not run yet", round, rr.exitCode,
			time.Since(t0).Round(time.Second), map[bool]string{true: " (stalled)"}[rr.stalled], left)
		if len(tl.topLevel()) == 0 {
			say("no test ran; the end of the test binary's output:\n%s", tailOf(logFile, 40))
			return 2
		}
		if (!rr.stalled && rr.exitCode <= 1) || left == 0 || len(done) == before {
			break
		}
	}

	tsv := filepath.Join(out, "results.tsv")
	if err := tl.writeTSV(tsv); err != nil {
		say("%v", err)
		return 2
	}
	ct := tl.counts()
	var hung, notRun []string
	for _, r := range tl.topLevel() {
		if r.Result == Hung {
			hung = append(hung, r.Name)
		}
	}
	for _, n := range listed {
		if !done[n] {
			notRun = append(notRun, n)
		}
	}
	say("registry: %d requests, %d answered 404 (%s)", reg.count.Load(), countLines(regLog, regexp.MustCompile(` -> 404$`)), regLog)
	if len(hung) > 0 {
		fmt.Printf("CONFORMANCE-HUNG: %s (counted as failures)\n", strings.Join(hung, " "))
	}
	if len(notRun) > 0 && c.skip == "" {
		fmt.Printf("CONFORMANCE-NOTRUN: %s (the last round stopped early; not counted)\n", strings.Join(notRun, " "))
	}
	fmt.Printf("CONFORMANCE-RESULTS: %s\n", tsv)
	fmt.Printf("CONFORMANCE: pass=%d fail=%d skip=%d (runtime %s, containerd %s, %d tests, %d round(s), %s)\n",
		ct.pass, ct.fail, ct.skip, c.runtime, c.version, len(tl.topLevel()), rounds, time.Since(start).Round(time.Second))
	if len(c.expectFiles) == 0 {
		return 0
	}
	unexpected, stale := verdict(tl.topLevel(), exp)
	if len(stale) > 0 {
		fmt.Printf("CONFORMANCE-NOW-PASSING: %s (listed in EXPECT_FILE but passed: remove them)\n", strings.Join(stale, " "))
	}
	if len(unexpected) > 0 && c.retryFailed {
		var failed []string
		for _, u := range unexpected {
			if name, res, _ := strings.Cut(u, " ("); res == Fail+")" {
				failed = append(failed, name)
			}
		}
		if len(failed) > 0 {
			flaky, err := rerun(c, t, cg, base, testEnv, filepath.Join(out, "retry.log"), failed)
			if err != nil {
				say("rerun of %s: %v", strings.Join(failed, " "), err)
				return 2
			}
			if len(flaky) > 0 {
				fmt.Printf("CONFORMANCE-FLAKY: %s (failed, then passed when rerun alone; log %s)\n",
					strings.Join(flaky, " "), filepath.Join(out, "retry.log"))
				isFlaky := map[string]bool{}
				for _, n := range flaky {
					isFlaky[n+" ("+Fail+")"] = true
				}
				var still []string
				for _, u := range unexpected {
					if !isFlaky[u] {
						still = append(still, u)
					}
				}
				unexpected = still
			}
		}
	}
	if len(unexpected) > 0 {
		fmt.Printf("CONFORMANCE-UNEXPECTED: %s (not in %s)\n", strings.Join(unexpected, " "), strings.Join(c.expectFiles, " "))
		return 1
	}
	fmt.Printf("CONFORMANCE-EXPECTED: every failure and skip is listed in %s\n", strings.Join(c.expectFiles, " "))
	return 0
}

// rerun runs the named top-level tests once more, alone, and returns those
// that pass: a failure that does not repeat is told apart from one that
// does, without hiding it (the caller prints it).
func rerun(c *config, t *tools, cg string, base, env []string, logFile string, names []string) ([]string, error) {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	args := append(append([]string(nil), base...), "-test.run", "^("+strings.Join(quoted, "|")+")$")
	say("rerunning %s alone; log %s", strings.Join(names, " "), logFile)
	rt := newTally()
	rt.round = 1
	rr := runRound(c, t, rt, cg, args, env, logFile, c.quiet)
	rt.endRound()
	if rr.err != nil {
		return nil, rr.err
	}
	var passed []string
	for _, r := range rt.topLevel() {
		if r.Result == Pass {
			passed = append(passed, r.Name)
		}
	}
	sort.Strings(passed)
	return passed, nil
}

func uniq(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
