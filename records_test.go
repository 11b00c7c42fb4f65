package runckit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// adoptEnv is what the three processes of the adoption test share.
type adoptEnv struct {
	ID, Bundle, Root, StateDir string
}

// A container made by one run of a program (a child process that then
// exits without deleting it) is adopted by a later run (another child):
// recorded exits are reported, live processes are watched and their exits
// reported as unknown (they are not the adopter's children), and kill,
// pause, exec, stats and delete work.
func TestAdoptContainerFromEarlierRun(t *testing.T) {
	if role := os.Getenv("RUNCKIT_ADOPT_ROLE"); role != "" {
		var env adoptEnv
		if err := json.Unmarshal([]byte(os.Getenv("RUNCKIT_ADOPT_ENV")), &env); err != nil {
			t.Fatal(err)
		}
		if role == "create" {
			adoptCreator(t, env)
		} else {
			adoptAdopter(t, env)
		}
		return
	}
	// This process must be a subreaper, as a shim's parent would be: the
	// creator's container processes are re-parented here when it exits, and
	// reaped here at the end.
	if _, err := runckit.NewExitWatcher(); err != nil {
		t.Fatal(err)
	}
	env := adoptEnv{
		ID:       newID(t),
		Bundle:   runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
		Root:     runckittest.RuntimeRoot(t),
		StateDir: t.TempDir(),
	}
	out := runRole(t, "create", env)
	var initPid, sleeperPid int
	if _, err := fmt.Sscanf(lastLine(out, "PIDS "), "PIDS %d %d", &initPid, &sleeperPid); err != nil {
		t.Fatalf("creator printed no pids:\n%s", out)
	}
	pids := []int{initPid, sleeperPid}
	paths, _ := filepath.Glob(filepath.Join(env.StateDir, env.ID+"@*.json"))
	if len(paths) != 1 {
		t.Fatalf("state dir holds records %v, want one named %s@<root>.json", paths, env.ID)
	}
	record, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(paths[0]); fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode = %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(string(record), `"quick"`) {
		t.Errorf("record lacks the quick exec's exit: %s", record)
	}
	// The creator's init and sleeper were re-parented here, as they would be
	// to a shim's parent. Like that parent, reap them as they exit: a PID
	// namespace's init can not finish exiting while a zombie of its
	// namespace is unreaped.
	reaped := make(chan error, len(pids))
	for _, pid := range pids {
		go func() {
			var ws syscall.WaitStatus
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err == nil && ws.Signal() != syscall.SIGKILL {
				err = fmt.Errorf("adopted pid %d ended with %v, want SIGKILL", pid, ws)
			}
			reaped <- err
		}()
	}
	runRole(t, "adopt", env)
	for range pids {
		if err := <-reaped; err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(paths[0]); err == nil {
		t.Error("record left after the adopter deleted the container")
	}
}

func runRole(t *testing.T, role string, env adoptEnv) string {
	t.Helper()
	data, _ := json.Marshal(env)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdoptContainerFromEarlierRun$", "-test.v")
	cmd.Env = append(os.Environ(), "RUNCKIT_ADOPT_ROLE="+role, "RUNCKIT_ADOPT_ENV="+string(data), "RUNCKIT_SHIM_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ROLE OK") {
		t.Fatalf("%s role: %v\n%s", role, err, out)
	}
	return string(out)
}

func lastLine(out, prefix string) string {
	var last string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			last = l[i:]
		}
	}
	return last
}

func adoptCreator(t *testing.T, env adoptEnv) {
	ctx := runckittest.Context(t, time.Minute)
	c, err := runckit.NewContainer(ctx, env.ID, env.Bundle, runckit.WithRuntimeRoot(env.Root), runckit.WithStateDir(env.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sleeper := runExec(t, ctx, c, "sleeper", "sleep", "100000")
	quick := runExec(t, ctx, c, "quick", "sh", "-c", "exit 3")
	if st, err := quick.Wait(ctx); err != nil || st.Code != 3 {
		t.Fatalf("quick = %v, %v", st, err)
	}
	fmt.Printf("PIDS %d %d\n", c.Init().Pid(), sleeper.Pid())
	fmt.Println("ROLE OK")
	os.Exit(0) // no Delete: the container outlives this run
}

func adoptAdopter(t *testing.T, env adoptEnv) {
	ctx := runckittest.Context(t, time.Minute)
	if _, err := runckit.LoadContainer(ctx, env.ID, runckit.WithRuntimeRoot(env.Root)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("LoadContainer without a state dir = %v, want ErrInvalidArgument", err)
	}
	if _, err := runckit.LoadContainer(ctx, "no-such", runckit.WithRuntimeRoot(env.Root), runckit.WithStateDir(env.StateDir)); !errdefs.IsNotFound(err) {
		t.Errorf("LoadContainer of an unknown ID = %v, want ErrNotFound", err)
	}
	rec := &runckittest.Recorder{}
	c, err := runckit.LoadContainer(ctx, env.ID, runckit.WithRuntimeRoot(env.Root), runckit.WithStateDir(env.StateDir), runckit.WithEventSink(rec))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runckit.LoadContainer(ctx, env.ID, runckit.WithRuntimeRoot(env.Root), runckit.WithStateDir(env.StateDir)); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second LoadContainer = %v, want ErrAlreadyExists", err)
	}
	quick, err := c.Process("quick")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := quick.Wait(ctx); err != nil || st.Code != 3 {
		t.Errorf("recorded exit of quick = %v, %v; want exit code 3", st, err)
	}
	if _, err := c.Stats(ctx); err != nil {
		t.Errorf("Stats: %v", err)
	}
	if err := c.Pause(ctx); err != nil {
		t.Errorf("Pause: %v", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Errorf("Resume: %v", err)
	}
	fresh := runExec(t, ctx, c, "fresh", "sh", "-c", "exit 4")
	if st, err := fresh.Wait(ctx); err != nil || st.Code != 4 || st.Unknown {
		t.Errorf("exec started by the adopter = %v, %v; want exit code 4", st, err)
	}
	sleeper, _ := c.Process("sleeper")
	if err := sleeper.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := sleeper.Wait(ctx); err != nil || !st.Unknown || st.Success() {
		t.Errorf("adopted sleeper = %+v, %v; want an explicitly unknown status", st, err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || !st.Unknown {
		t.Errorf("adopted init = %+v, %v; want an explicitly unknown status", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	c.Flush(context.Background())
	if got := kinds(rec.Events()); got != "pause resume exec-added:fresh exec-started:fresh exit:fresh exit:sleeper exit delete" {
		t.Errorf("adopter's events = %s", got)
	}
	fmt.Println("ROLE OK")
}
