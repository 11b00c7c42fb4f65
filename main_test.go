package runckit_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// TestMain runs the suite and then checks that it leaked nothing: no
// goroutine, fd, zombie or mount under the test directories.
func TestMain(m *testing.M) {
	if err := runckittest.Check(); err != nil {
		fmt.Fprintf(os.Stderr, "runckit tests need real containers: %v\n", err)
		os.Exit(1)
	}
	// Everything the suite makes lives under a private TMPDIR, so the mount
	// check below counts only the suite's own mounts: another program's
	// mount under /tmp can not fail it, and a leak of ours still does.
	tmp, err := os.MkdirTemp("", "runckit-suite-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "suite temp dir: %v\n", err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", tmp)
	suiteTmp = tmp
	fdsBefore := openFDs()
	code := m.Run()
	runckittest.Cleanup()
	faultrunc.Cleanup()
	// A shim child keeps its reaper for life, as a dedicated program does.
	if code == 0 && os.Getenv("RUNCKIT_SHIM_CHILD") == "" {
		// The orphan reaper is the program's SIGCHLD handler: it lives as
		// long as the program, by design.
		if err := goleak.Find(runckittest.IgnoreRunckitGoroutines()...); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked: %v\n", err)
			code = 1
		}
		if after := openFDs(); after > fdsBefore {
			fmt.Fprintf(os.Stderr, "fds leaked: %d open before the suite, %d after\n", fdsBefore, after)
			code = 1
		}
		if z := zombieChildren(); len(z) > 0 {
			fmt.Fprintf(os.Stderr, "zombie children left: %v\n", z)
			code = 1
		}
		if m := testMounts(); len(m) > 0 {
			fmt.Fprintf(os.Stderr, "mounts left: %v\n", m)
			code = 1
		}
	}
	if code == 0 && len(testMounts()) == 0 {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// suiteTmp is the suite's private TMPDIR.
var suiteTmp string

func openFDs() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}

// zombieChildren lists children of this process that exited and were never
// reaped.
func zombieChildren() []string {
	var out []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, pid := range strings.Fields(string(data)) {
			stat, _ := os.ReadFile("/proc/" + pid + "/stat")
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
				out = append(out, pid)
			}
		}
	}
	return out
}

func testMounts() []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], suiteTmp+"/") {
			out = append(out, f[4])
		}
	}
	return out
}
