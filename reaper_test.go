package runckit_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// The reaping watcher changes process-wide state (SIGCHLD handling, the
// go-runc monitor), so its test runs in a child process of its own: a
// dedicated "shim".
func TestReapingWatcherReapsOrphansButNoWatchedExit(t *testing.T) {
	if os.Getenv("RUNCKIT_SHIM_CHILD") == "1" {
		shimChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReapingWatcherReapsOrphansButNoWatchedExit$", "-test.v")
	cmd.Env = append(os.Environ(), "RUNCKIT_SHIM_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SHIM OK") {
		t.Fatalf("shim child: %v\n%s", err, out)
	}
}

func shimChild(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	// Everything that runs commands with os/exec comes first: from
	// NewReapingExitWatcher on, this process reaps every unclaimed child.
	runckittest.Rootfs(t)
	w, err := runckit.NewReapingExitWatcher()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	// The host PID namespace: orphans of the execs are re-parented to us.
	spec := hostPIDSpec(t, "sleep", "100000")
	c := e.create(ctx, spec, runckit.WithExitWatcher(w))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := []string{"sh", "-c", "sleep 0.1 & exit 4"} // leaves an orphan
			if i%2 == 1 {
				args = []string{"sh", "-c", "exit 4"}
			}
			p, err := c.Exec(ctx, fmt.Sprintf("e%d", i), runckittest.ProcessSpec(args...), runckit.Stdio{})
			if err == nil {
				err = p.Start(ctx)
			}
			if err != nil {
				t.Error(err)
				return
			}
			if st, err := p.Wait(ctx); err != nil || st.Code != 4 || st.Unknown {
				t.Errorf("exec %d = %v, %v; want exit code 4, collected by runckit", i, st, err)
			}
		}()
	}
	wg.Wait()
	// The orphaned sleeps end after 0.1 s; the reaper must collect them, so
	// wait until no sleep is left among our children, alive or zombie.
	deadline := time.Now().Add(10 * time.Second)
	for childrenNamed("sleep", c.Init().Pid()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if z := zombieChildren(); len(z) > 0 {
		var about []string
		for _, pid := range z {
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			status, _ := os.ReadFile("/proc/" + pid + "/status")
			about = append(about, fmt.Sprintf("%s %q %q", pid, strings.TrimSpace(string(comm)), lastLine(string(status), "NSpid")))
		}
		t.Errorf("zombies left with the reaping watcher: %v", about)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if !t.Failed() {
		fmt.Println("SHIM OK")
	}
}

// A process started in the container behind runckit's back (runc exec
// --detach from a shell) is re-parented to this program; when it exits it
// is reaped, or the container's init could never finish exiting.
func TestStrayContainerProcessIsReaped(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	for i := 0; i < 3; i++ {
		if out, err := exec.Command("runc", "--root", e.root, "exec", "-d", c.ID(), "true").CombinedOutput(); err != nil {
			t.Fatalf("runc exec -d: %v: %s", err, out)
		}
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatalf("init's exit never came: %v", err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// A container the program runs with go-runc directly, beside runckit's, is
// not runckit's to reap: its init's exit stays for the program's own wait4.
func TestForeignContainerNotReaped(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	e.sleeper(ctx) // runckit is active: subreaper, orphan reaper running
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sh", "-c", "exit 5"))
	r := &runc.Runc{Root: e.root}
	null, _ := runc.NewNullIO()
	pidFile := filepath.Join(bundle, "pid")
	if err := r.Create(ctx, "foreign", bundle, &runc.CreateOpts{IO: null, PidFile: pidFile}); err != nil {
		t.Fatal(err)
	}
	defer r.Delete(context.Background(), "foreign", &runc.DeleteOpts{Force: true})
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if err := r.Start(ctx, "foreign"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let SIGCHLD reach the reaper
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatalf("wait4 on the foreign init: %v (taken by runckit's reaper?)", err)
	}
	if ws.ExitStatus() != 5 {
		t.Errorf("foreign init status %v, want exit 5", ws)
	}
}

// childrenNamed counts this process's children, alive or zombie, whose
// command name is comm, leaving out pid except.
func childrenNamed(comm string, except int) int {
	n := 0
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, pid := range strings.Fields(string(data)) {
			if pid == strconv.Itoa(except) {
				continue
			}
			if name, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(name)) == comm {
				n++
			}
		}
	}
	return n
}
