package runckit_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestHostPIDInitExitKillsItsChildren is DESIGN.md rule 7 for what runckit
// does not track: in the host PID namespace init's death ends nothing else,
// so init's own children and an exec's background child outlive it.
// containerd's client expects them gone once init's exit is reported
// (TestContainerKillInitPidHost): runckit kills everything left in the
// container's cgroup, as runc kill --all does. Unfixed, the sleeps lived on.
func TestHostPIDInitExitKillsItsChildren(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, hostPIDSpec(t, "sh", "-c", "sleep 100000 & sleep 100001 && exit 0"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	initPid := c.Init().Pid()
	kids := awaitChildren(t, initPid, 2)

	// An exec that leaves a child behind and exits.
	out := &syncBuffer{}
	p, err := c.Exec(ctx, "bg", runckittest.ProcessSpec("sh", "-c", "sleep 100002 >/dev/null 2>&1 & echo $!"), runckit.Stdio{Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("exec = %v, %v", st, err)
	}
	bg, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("exec's background pid: %q: %v", out.String(), err)
	}
	kids = append(kids, pidfdOf(t, bg))

	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if st, err := c.Wait(wctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("init Wait = %v, %v; want killed by SIGKILL", st, err)
	}
	// The signals are sent before init's exit is published; the kernel
	// ends the processes a moment later.
	for _, k := range kids {
		fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 2000)
		if err != nil || n != 1 {
			cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(k.pid) + "/cmdline")
			t.Errorf("pid %d (%q) still runs 2 s after init's exit was reported (poll = %d, %v)",
				k.pid, strings.ReplaceAll(string(cmd), "\x00", " "), n, err)
		}
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// pidfdChild is a process the test watches through a pidfd.
type pidfdChild struct{ pid, fd int }

func pidfdOf(t *testing.T, pid int) pidfdChild {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return pidfdChild{pid: pid, fd: fd}
}

// awaitChildren waits until pid has n children and returns pidfds of them.
func awaitChildren(t *testing.T, pid, n int) []pidfdChild {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
		f := strings.Fields(string(data))
		if len(f) >= n {
			var out []pidfdChild
			for _, s := range f {
				k, _ := strconv.Atoi(s)
				out = append(out, pidfdOf(t, k))
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has children %v, want %d", pid, f, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
