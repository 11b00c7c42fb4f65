package runckit_test

import (
	"bytes"
	"encoding/json"
	"errors"
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

// The adoption tests play "the program restarted" with two processes: the
// test binary is started again as an earlier run (role "create") that makes
// containers with WithStateDir and exits without deleting them; the test
// itself, a subreaper, inherits their processes as a shim's parent would,
// and is the later run that adopts them (or starts one, role "adopt-reused").
const recordsRoleEnv = "RUNCKIT_RECORDS_ROLE"

// recordsContainer is one container the earlier run makes.
type recordsContainer struct {
	ID, Bundle, Root string
	InitStdout       string // init's StdoutPath
	Start            bool
	SleeperStdout    string // if set, an exec "sleeper" writing there is started
	Pause            bool
	WaitInit         bool // init exits by itself; its exit is recorded
}

type recordsEnv struct {
	StateDir   string
	Containers []recordsContainer
}

// created is what the earlier run reports of one container.
type created struct {
	InitPid int
	LastSeq uint64 // Seq of the last event its sink received
}

// playRecordsRole runs the part this process was started for, if any.
func playRecordsRole(t *testing.T) bool {
	role := os.Getenv(recordsRoleEnv)
	if role == "" {
		return false
	}
	var env recordsEnv
	if err := json.Unmarshal([]byte(os.Getenv("RUNCKIT_RECORDS_ENV")), &env); err != nil {
		t.Fatal(err)
	}
	switch role {
	case "create":
		recordsCreate(t, env)
	case "adopt-reused":
		adoptReusedInitPid(t, env)
	default:
		t.Fatalf("unknown role %q", role)
	}
	return true
}

// runRecordsRole starts this test again in a child process playing role.
func runRecordsRole(t *testing.T, role string, env recordsEnv) string {
	t.Helper()
	data, _ := json.Marshal(env)
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), recordsRoleEnv+"="+role, "RUNCKIT_RECORDS_ENV="+string(data), "RUNCKIT_SHIM_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ROLE OK") {
		t.Fatalf("%s role: %v\n%s", role, err, out)
	}
	return string(out)
}

// createEarlier runs the earlier run and returns what it made. This process
// becomes a subreaper first, so the containers' processes are re-parented
// here; if the test fails, they are killed and reaped at its end.
func createEarlier(t *testing.T, env recordsEnv) []created {
	t.Helper()
	if _, err := runckit.NewExitWatcher(); err != nil {
		t.Fatal(err)
	}
	out := runRecordsRole(t, "create", env)
	made := make([]created, len(env.Containers))
	for i := range made {
		line := lastLine(out, fmt.Sprintf("CREATED %d ", i))
		var n int
		if _, err := fmt.Sscanf(line, "CREATED %d %d %d", &n, &made[i].InitPid, &made[i].LastSeq); err != nil {
			t.Fatalf("earlier run printed no pid for container %d:\n%s", i, out)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			reapLeftovers(made)
		}
	})
	return made
}

// reapLeftovers ends the inits of containers a failed test left and reaps
// whatever exits: in a PID namespace, init can not finish exiting while a
// zombie of its namespace is unreaped.
func reapLeftovers(made []created) {
	for _, m := range made {
		syscall.Kill(m.InitPid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); errors.Is(err, syscall.ECHILD) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func recordsCreate(t *testing.T, env recordsEnv) {
	ctx := runckittest.Context(t, time.Minute)
	for i, ct := range env.Containers {
		rec := &runckittest.Recorder{}
		c, err := runckit.NewContainer(ctx, ct.ID, ct.Bundle, runckit.WithRuntimeRoot(ct.Root),
			runckit.WithStateDir(env.StateDir), runckit.WithEventSink(rec),
			runckit.WithStdio(runckit.Stdio{StdoutPath: ct.InitStdout}))
		if err != nil {
			t.Fatal(err)
		}
		if ct.Start {
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ct.SleeperStdout != "" {
			p, err := c.Exec(ctx, "sleeper", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{StdoutPath: ct.SleeperStdout})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ct.Pause {
			if err := c.Pause(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ct.WaitInit {
			if _, err := c.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		events := rec.Events()
		fmt.Printf("CREATED %d %d %d\n", i, c.Init().Pid(), events[len(events)-1].Seq)
	}
	fmt.Println("ROLE OK")
	os.Exit(0) // no Delete: the containers outlive this run
}

// checkSeqAfter checks that events continue the earlier run's numbering.
func checkSeqAfter(t *testing.T, events []runckit.Event, last uint64) {
	t.Helper()
	for i, e := range events {
		if want := last + 1 + uint64(i); e.Seq != want {
			t.Errorf("event %v has Seq %d, want %d: the earlier run's last was %d", e, e.Seq, want, last)
		}
	}
}

func loadIn(t *testing.T, ct recordsContainer, stateDir string, opts ...runckit.Option) *runckit.Container {
	t.Helper()
	ctx := runckittest.Context(t, time.Minute)
	opts = append([]runckit.Option{runckit.WithRuntimeRoot(ct.Root), runckit.WithStateDir(stateDir)}, opts...)
	c, err := runckit.LoadContainer(ctx, ct.ID, opts...)
	if err != nil {
		t.Fatalf("LoadContainer(%s in %s): %v", ct.ID, ct.Root, err)
	}
	t.Cleanup(func() {
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("cleanup delete %s: %v", c.ID(), err)
		}
	})
	return c
}

// If init died while no program ran and a host process now has its pid,
// adoption must not take that process for init: not its PID namespace
// (the host's), whose orphans the reaper would then take, nor its cgroup.
// The host process here is a sleep of this test; the record is edited to
// name it, as a reused pid looks (the dead init's start time, another
// process behind the pid). The adopter's own os/exec children must all
// report their exit codes.
func TestAdoptIgnoresReusedInitPid(t *testing.T) {
	if playRecordsRole(t) {
		return
	}
	ctx := runckittest.Context(t, time.Minute)
	env := recordsEnv{StateDir: t.TempDir(), Containers: []recordsContainer{{
		ID: newID(t), Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
		Root: runckittest.RuntimeRoot(t), Start: true,
	}}}
	made := createEarlier(t, env)
	// "While the program is down" init dies, and its parent (this test)
	// reaps it: runc now calls the container stopped.
	if err := syscall.Kill(made[0].InitPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(made[0].InitPid, &ws, 0, nil); err != nil {
		t.Fatalf("reap init %d: %v", made[0].InitPid, err)
	}
	host := exec.CommandContext(ctx, "sleep", "1000")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Process.Kill(); host.Wait() })

	paths, _ := filepath.Glob(filepath.Join(env.StateDir, "*.json"))
	if len(paths) != 1 {
		t.Fatalf("state dir holds %v, want one record", paths)
	}
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&rec); err != nil {
		t.Fatal(err)
	}
	initRec := rec["processes"].(map[string]any)[""].(map[string]any)
	initRec["pid"] = host.Process.Pid
	if data, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(paths[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	runRecordsRole(t, "adopt-reused", env)
}

func adoptReusedInitPid(t *testing.T, env recordsEnv) {
	ctx := runckittest.Context(t, time.Minute)
	ct := env.Containers[0]
	c, err := runckit.LoadContainer(ctx, ct.ID, runckit.WithRuntimeRoot(ct.Root), runckit.WithStateDir(env.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	// Each child exits before Wait is called, as when a program starts a
	// command and does other work first: Run, already blocked in waitid
	// when the child exits, would usually win the race with the reaper.
	for i := 0; i < 10; i++ {
		cmd := exec.Command("sh", "-c", "exit 7")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid)); err != nil || strings.Contains(string(stat), ") Z ") {
				break
			}
		}
		time.Sleep(50 * time.Millisecond) // the SIGCHLD of its exit has been handled
		err := cmd.Wait()
		if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Errorf("run %d of sh -c 'exit 7' while the container is adopted: %v, want exit status 7", i, err)
		}
	}
	if st, err := c.Wait(ctx); err != nil || !st.Unknown {
		t.Errorf("init that died while no program ran = %+v, %v; want an unknown status", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Errorf("Delete: %v", err)
	}
	if !t.Failed() {
		fmt.Println("ROLE OK")
	}
}

// One ID may name containers in two runtime roots that keep their records
// in one state directory: each has its own record, deleting one leaves the
// other's, and WithRuntimeRoot picks which one LoadContainer adopts.
func TestRecordsOfOneIDInTwoRuntimeRoots(t *testing.T) {
	if playRecordsRole(t) {
		return
	}
	ctx := runckittest.Context(t, time.Minute)
	id := newID(t)
	env := recordsEnv{StateDir: t.TempDir()}
	for i := 0; i < 2; i++ {
		spec := runckittest.Spec(t, "sleep", "100000")
		spec.Linux.CgroupsPath = fmt.Sprintf("/%s-%d", id, i) // runc's default, /<id>, would be shared
		env.Containers = append(env.Containers, recordsContainer{
			ID: id, Bundle: runckittest.Bundle(t, spec), Root: runckittest.RuntimeRoot(t), Start: true,
		})
	}
	made := createEarlier(t, env)
	if c, err := runckit.LoadContainer(ctx, id, runckit.WithStateDir(env.StateDir)); !errdefs.IsNotFound(err) {
		if c != nil {
			c.Delete(ctx, runckit.DeleteForce())
		}
		t.Fatalf("LoadContainer in the default root = %v, want ErrNotFound: no container %s was made there", err, id)
	}
	for i, ct := range env.Containers {
		c := loadIn(t, ct, env.StateDir)
		if c.Bundle() != ct.Bundle || c.Init().Pid() != made[i].InitPid {
			t.Fatalf("LoadContainer in root %d adopted bundle %s, init %d; want %s, init %d",
				i, c.Bundle(), c.Init().Pid(), ct.Bundle, made[i].InitPid)
		}
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
			t.Fatalf("delete the container in root %d: %v", i, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(env.StateDir, "*")); len(left) != 0 {
		t.Errorf("records left after both containers were deleted: %v", left)
	}
}

// A container adopted before it was started is created, as runc says: Start
// runs it, the start event continues the earlier run's numbering, and init
// writes to the stdout the earlier run gave it.
func TestAdoptCreatedContainerStarts(t *testing.T) {
	if playRecordsRole(t) {
		return
	}
	ctx := runckittest.Context(t, time.Minute)
	out := filepath.Join(t.TempDir(), "init.out")
	env := recordsEnv{StateDir: t.TempDir(), Containers: []recordsContainer{{
		ID: newID(t), Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sh", "-c", "echo started; exec sleep 100000")),
		Root: runckittest.RuntimeRoot(t), InitStdout: "file://" + out,
	}}}
	made := createEarlier(t, env)
	rec := &runckittest.Recorder{}
	c := loadIn(t, env.Containers[0], env.StateDir, runckit.WithEventSink(rec))
	if got := c.Init().Status(); got != runckit.StatusCreated {
		t.Errorf("adopted init is %s, want %s", got, runckit.StatusCreated)
	}
	if got := c.Init().Stdio().StdoutPath; got != "file://"+out {
		t.Errorf("adopted init's StdoutPath = %q, want %q", got, "file://"+out)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start of an adopted created container: %v", err)
	}
	if got := c.Init().Status(); got != runckit.StatusRunning {
		t.Errorf("started init is %s, want %s", got, runckit.StatusRunning)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if data, _ := os.ReadFile(out); string(data) == "started\n" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("init's stdout = %q, want %q", data, "started\n")
		}
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
	events := rec.Events()
	if got := kinds(events); got != "start exit delete" {
		t.Errorf("adopter's events = %s, want start exit delete", got)
	}
	checkSeqAfter(t, events, made[0].LastSeq)
}

// A container adopted while paused is paused, as runc says: execs are
// refused until Resume, which works and publishes resume.
func TestAdoptPausedContainerResumes(t *testing.T) {
	if playRecordsRole(t) {
		return
	}
	ctx := runckittest.Context(t, time.Minute)
	out := filepath.Join(t.TempDir(), "sleeper.out")
	env := recordsEnv{StateDir: t.TempDir(), Containers: []recordsContainer{{
		ID: newID(t), Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
		Root: runckittest.RuntimeRoot(t), Start: true, SleeperStdout: out, Pause: true,
	}}}
	made := createEarlier(t, env)
	rec := &runckittest.Recorder{}
	c := loadIn(t, env.Containers[0], env.StateDir, runckit.WithEventSink(rec))
	if got := c.Init().Status(); got != runckit.StatusPaused {
		t.Errorf("adopted init is %s, want %s", got, runckit.StatusPaused)
	}
	sleeper, err := c.Process("sleeper")
	if err != nil {
		t.Fatal(err)
	}
	if got := sleeper.Stdio().StdoutPath; got != out {
		t.Errorf("adopted exec's StdoutPath = %q, want %q", got, out)
	}
	if _, err := c.Exec(ctx, "early", runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Exec in an adopted paused container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatalf("Resume of an adopted paused container: %v", err)
	}
	if got := c.Init().Status(); got != runckit.StatusRunning {
		t.Errorf("resumed init is %s, want %s", got, runckit.StatusRunning)
	}
	after := runExec(t, ctx, c, "after", "sh", "-c", "exit 4")
	if st, err := after.Wait(ctx); err != nil || st.Code != 4 {
		t.Errorf("exec after Resume = %v, %v; want exit code 4", st, err)
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
	events := rec.Events()
	if got := kinds(events); got != "resume exec-added:after exec-started:after exit:after exit:sleeper exit delete" {
		t.Errorf("adopter's events = %s", got)
	}
	checkSeqAfter(t, events, made[0].LastSeq)
}

// A container whose init exited while no program ran is stopped: Wait
// reports the exit as unknown, or as recorded if the earlier run saw it,
// and Delete works.
func TestAdoptStoppedContainer(t *testing.T) {
	if playRecordsRole(t) {
		return
	}
	ctx := runckittest.Context(t, time.Minute)
	env := recordsEnv{StateDir: t.TempDir(), Containers: []recordsContainer{{
		ID: newID(t), Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
		Root: runckittest.RuntimeRoot(t), Start: true,
	}, {
		ID: newID(t), Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sh", "-c", "exit 5")),
		Root: runckittest.RuntimeRoot(t), Start: true, WaitInit: true,
	}}}
	made := createEarlier(t, env)
	// Between the runs, init of the first container is killed and reaped
	// by its parent, this test.
	if err := syscall.Kill(made[0].InitPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(made[0].InitPid, &ws, 0, nil); err != nil {
		t.Fatalf("reap init %d: %v", made[0].InitPid, err)
	}
	want := []struct {
		status runckit.ExitStatus
		events string
	}{
		{runckit.ExitStatus{Code: 255, Unknown: true}, "exit delete"}, // seen only now
		{runckit.ExitStatus{Code: 5}, "delete"},                       // its exit event went out in the earlier run
	}
	for i, ct := range env.Containers {
		rec := &runckittest.Recorder{}
		c := loadIn(t, ct, env.StateDir, runckit.WithEventSink(rec))
		st, err := c.Wait(ctx)
		if err != nil || st.Code != want[i].status.Code || st.Unknown != want[i].status.Unknown {
			t.Errorf("container %d: Wait = %+v, %v; want %v", i, st, err, want[i].status)
		}
		if got := c.Init().Status(); got != runckit.StatusStopped {
			t.Errorf("container %d: init is %s, want %s", i, got, runckit.StatusStopped)
		}
		if err := c.Delete(ctx); err != nil {
			t.Errorf("container %d: Delete: %v", i, err)
		}
		events := rec.Events()
		if got := kinds(events); got != want[i].events {
			t.Errorf("container %d: adopter's events = %s, want %s", i, got, want[i].events)
		}
		checkSeqAfter(t, events, made[i].LastSeq)
	}
}
