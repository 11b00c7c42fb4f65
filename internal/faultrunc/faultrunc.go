// Package faultrunc injects faults into runc invocations for tests.
//
// New builds the faultrunc command (cmd/faultrunc) once per test binary and
// returns a Runtime whose Path is a wrapper script to use in place of runc,
// for example with runckit.WithRuntime(rt.Path). Set arms a fault for one
// runc subcommand; without one, the wrapper execs the real runc unchanged.
// Call Cleanup from TestMain to remove the built binary.
package faultrunc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Action says what faultrunc does to an invocation of a subcommand.
type Action string

const (
	// Fail logs Message as a runc error (to the --log file as JSON and to
	// stderr) and exits 1 without running runc.
	Fail Action = "fail"
	// Stall waits, after announcing itself (see WaitStalled), until Release
	// is called, then runs runc. A cancelled caller's kill ends it.
	Stall Action = "stall"
	// CrashBefore kills the invocation with SIGKILL before runc runs.
	CrashBefore Action = "crash-before"
	// CrashAfter runs runc to completion, then SIGKILLs the invocation.
	CrashAfter Action = "crash-after"
	// StallAfter runs runc to completion, then stalls like Stall before
	// exiting with runc's status.
	StallAfter Action = "stall-after"
)

// Fault is a fault armed for one subcommand.
type Fault struct {
	Action  Action `json:"action"`
	Message string `json:"message,omitempty"` // for Fail
	Once    bool   `json:"once,omitempty"`    // fire for one invocation only
}

// Runtime is a fault-injecting runc for one test.
type Runtime struct {
	Path string // wrapper script to use as the runtime binary
	Dir  string // control directory holding faults and markers
}

var build struct {
	once sync.Once
	dir  string // temporary directory holding the binary
	bin  string
	err  error
}

// New returns a Runtime with its own control directory and no faults. It
// wraps the runtime $RUNCKIT_TEST_RUNTIME names (runckittest.RuntimeEnv),
// runc by default, and skips the test if that is not installed.
func New(t testing.TB) *Runtime {
	t.Helper()
	wrapped := os.Getenv("RUNCKIT_TEST_RUNTIME")
	if wrapped == "" {
		wrapped = "runc"
	}
	real, err := exec.LookPath(wrapped)
	if err != nil {
		t.Skipf("faultrunc: %s not found: %v", wrapped, err)
	}
	if real, err = filepath.Abs(real); err != nil {
		t.Fatal(err)
	}
	build.once.Do(buildBinary)
	if build.err != nil {
		t.Fatalf("faultrunc: %v", build.err)
	}
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\nFAULTRUNC_CONTROL=%s FAULTRUNC_REAL=%s exec %s \"$@\"\n",
		quote(dir), quote(real), quote(build.bin))
	path := filepath.Join(dir, "runc")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Runtime{Path: path, Dir: dir}
}

// Cleanup removes the binary New built. Call it from TestMain after m.Run.
func Cleanup() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// BinEnv names a prebuilt cmd/faultrunc binary to use instead of building
// one: a test binary run where there is no Go toolchain, or no time for it
// (the cgroup v2 lane's guest), is given one.
const BinEnv = "FAULTRUNC_BIN"

// buildBinary builds cmd/faultrunc into a new temporary directory, unless
// $FAULTRUNC_BIN names one already built.
func buildBinary() {
	if bin := os.Getenv(BinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			build.err = fmt.Errorf("%s: %w", BinEnv, err)
			return
		}
		build.bin = bin
		return
	}
	root, err := moduleRoot()
	if err != nil {
		build.err = err
		return
	}
	if build.dir, err = os.MkdirTemp("", "faultrunc-"); err != nil {
		build.err = err
		return
	}
	build.bin = filepath.Join(build.dir, "faultrunc")
	cmd := exec.Command("go", "build", "-o", build.bin,
		"github.com/runckit/runckit/internal/faultrunc/cmd/faultrunc")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		build.err = fmt.Errorf("go build: %v\n%s", err, out)
	}
}

// moduleRoot walks up from the working directory to the one with go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// quote quotes s for the shell.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Set arms f for subcommand (a runc subcommand such as "create" or "exec"),
// replacing any fault armed before. It also removes the stall and release
// markers left by an earlier fault for the subcommand.
func (r *Runtime) Set(t testing.TB, subcommand string, f Fault) {
	t.Helper()
	r.removeMarkers(subcommand)
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(r.Dir, subcommand+".json.tmp")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), r.file(subcommand, ".json"))
	}
	if err != nil {
		os.Remove(tmp.Name())
		t.Fatal(err)
	}
}

// Clear disarms the fault for subcommand, if any. Invocations already
// stalled stay stalled until Release.
func (r *Runtime) Clear(subcommand string) {
	os.Remove(r.file(subcommand, ".json"))
}

// WaitStalled waits until an invocation of subcommand has stalled (Stall or
// StallAfter) since the fault was Set, or until ctx is done.
func (r *Runtime) WaitStalled(ctx context.Context, subcommand string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if len(r.stalled(subcommand)) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("faultrunc: waiting for %s to stall: %w", subcommand, ctx.Err())
		case <-tick.C:
		}
	}
}

// Release lets stalled invocations of subcommand go on, and any that stall
// later pass straight through, until the next Set for subcommand.
func (r *Runtime) Release(subcommand string) {
	os.WriteFile(r.file(subcommand, ".release"), nil, 0o644)
}

func (r *Runtime) file(subcommand, suffix string) string {
	return filepath.Join(r.Dir, subcommand+suffix)
}

// stalled returns the stall markers of subcommand: "<sub>.stalled" for the
// first invocation, "<sub>.stalled.<pid>" for others.
func (r *Runtime) stalled(subcommand string) []string {
	entries, _ := os.ReadDir(r.Dir)
	var out []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), subcommand+".stalled")
		pid, dotted := strings.CutPrefix(rest, ".")
		if ok && (rest == "" || dotted && pid != "" && strings.Trim(pid, "0123456789") == "") {
			out = append(out, filepath.Join(r.Dir, e.Name()))
		}
	}
	return out
}

func (r *Runtime) removeMarkers(subcommand string) {
	for _, m := range r.stalled(subcommand) {
		os.Remove(m)
	}
	os.Remove(r.file(subcommand, ".release"))
}
