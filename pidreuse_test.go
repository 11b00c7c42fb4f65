package runckit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

const nsLastPid = "/proc/sys/kernel/ns_last_pid"

func lastPid(t *testing.T) int {
	data, err := os.ReadFile(nsLastPid)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

// steerNextPid makes the kernel hand out pid next to the next fork in this
// PID namespace (unless something else forks first).
func steerNextPid(t *testing.T, next int) {
	if err := os.WriteFile(nsLastPid, []byte(strconv.Itoa(next-1)), 0); err != nil {
		t.Skipf("can not steer pids through %s: %v", nsLastPid, err)
	}
}

// A pid freed by a container process and reused by the kernel never
// receives that process's exit, and the reusing process's exit is never
// taken for it: by a host child of this program, then by another exec.
func TestReusedPidNeverGetsAnotherExit(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)

	a := runExec(t, ctx, c, "victim", "sleep", "100000")
	pid := a.Pid()
	if err := a.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := a.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("victim = %v, %v; want SIGKILL", st, err)
	}

	// 1. A host child of this program takes the pid and exits 7: its
	// status must reach exec.Cmd.Wait, not runckit.
	reusedByHost := false
	for try := 0; try < 20 && !reusedByHost; try++ {
		steerNextPid(t, pid)
		cmd := exec.Command("/bin/busybox", "sh", "-c", "exit 7")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		reusedByHost = cmd.Process.Pid == pid
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("host child (pid %d) Wait = %v, want exit status 7", cmd.Process.Pid, err)
		}
	}
	if !reusedByHost {
		t.Fatalf("the kernel never gave pid %d to the host child in 20 tries", pid)
	}

	// 2. Another exec takes the pid. runc forks several times (and runs
	// threads) before the exec's process, so aim by the offset observed.
	reusedByExec := false
	offset := 0
	for try := 0; try < 40 && !reusedByExec; try++ {
		id := fmt.Sprintf("reuser-%d", try)
		base := lastPid(t)
		if offset > 0 {
			steerNextPid(t, pid-offset+1)
			base = pid - offset
		}
		p := runExec(t, ctx, c, id, "sh", "-c", "exit 5")
		offset = p.Pid() - base
		reusedByExec = p.Pid() == pid
		st, err := p.Wait(ctx)
		if err != nil || st.Code != 5 || st.Signal != 0 {
			t.Fatalf("%s (pid %d) = %v, %v; want exit code 5", id, p.Pid(), st, err)
		}
	}
	if !reusedByExec {
		t.Logf("no exec got pid %d in 40 tries (last offset %d); only the host-child half ran", pid, offset)
	}

	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Wait(ctx)
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	exits := checkOrder(t, e.rec.Events())
	for id, ev := range exits {
		switch {
		case id == "victim":
			if ev.Status.Signal != syscall.SIGKILL || ev.Pid != pid {
				t.Errorf("victim exit = %v", ev)
			}
		case strings.HasPrefix(id, "reuser-"):
			if ev.Status.Code != 5 {
				t.Errorf("%s exit = %v, want code 5", id, ev)
			}
		}
		if ev.Status.Code == 7 {
			t.Errorf("exit event %v carries the host child's status", ev)
		}
	}
	t.Logf("pid %d reused by host child: %v, by exec: %v", pid, reusedByHost, reusedByExec)
}

func runExec(t *testing.T, ctx context.Context, c *runckit.Container, id string, args ...string) *runckit.Process {
	t.Helper()
	return startExec(t, ctx, c, id, runckittest.ProcessSpec(args...), runckit.Stdio{})
}

// startExec is runExec with a spec and stdio of the caller's.
func startExec(t *testing.T, ctx context.Context, c *runckit.Container, id string, spec *specs.Process, stdio runckit.Stdio) *runckit.Process {
	t.Helper()
	p, err := c.Exec(ctx, id, spec, stdio)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}
