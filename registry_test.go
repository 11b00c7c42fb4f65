package runckit_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// createResult is what a NewContainer run in a goroutine returned.
type createResult struct {
	c   *runckit.Container
	err error
}

// forceDeleteOnCleanup deletes c, if any, when the test ends.
func forceDeleteOnCleanup(t *testing.T, c *runckit.Container) {
	if c == nil {
		return
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("cleanup delete %s: %v", c.ID(), err)
		}
	})
}

// pidAlive reports whether pid names a live process (not a zombie).
func pidAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] != 'Z'
}

// plainRuncCreate creates container id with runc directly, as another
// program would. Its output goes to a file, not a pipe: the container's
// init inherits it, and a pipe would not see EOF while init lives.
func plainRuncCreate(t *testing.T, root, bundle, pidFile, id string) ([]byte, error) {
	out, err := os.CreateTemp(t.TempDir(), "runc-out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command("runc", "--root", root, "create", "--bundle", bundle, "--pid-file", pidFile, id)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	data, _ := os.ReadFile(out.Name())
	return data, err
}

// TestRegistryRootSpellingsShareOneID drives two NewContainer calls for one
// ID whose runtime roots are spelled differently but name one directory.
// The first is stalled inside runc create (after it reserved the ID); the
// second must then be refused with ErrAlreadyExists rather than race it,
// and whichever container was made must keep its init. Unfixed, the second
// passed the registry, won runc create, and the first one's clean-up ran
// runc delete --force on it, killing its init.
func TestRegistryRootSpellingsShareOneID(t *testing.T) {
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	spellings := []struct {
		name  string
		spell func(t *testing.T, root string) string
	}{
		{"trailing-slash", func(t *testing.T, root string) string { return root + "/" }},
		{"dot-dot", func(t *testing.T, root string) string {
			return filepath.Join(root, "..") + "/./" + filepath.Base(root)
		}},
		{"relative", func(t *testing.T, root string) string {
			rel, err := filepath.Rel(cwd, root)
			if err != nil {
				t.Fatal(err)
			}
			return rel
		}},
		{"symlink", func(t *testing.T, root string) string {
			link := filepath.Join(t.TempDir(), "root-link")
			if err := os.Symlink(root, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
	}
	for _, sp := range spellings {
		t.Run(sp.name, func(t *testing.T) {
			ctx := runckittest.Context(t, time.Minute)
			root := runckittest.RuntimeRoot(t)
			other := sp.spell(t, root)
			id := newID(t)
			rt := faultrunc.New(t)
			rt.Set(t, "create", faultrunc.Fault{Action: faultrunc.Stall, Once: true})

			first := make(chan createResult, 1)
			go func() {
				c, err := runckit.NewContainer(ctx, id, runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
					runckit.WithRuntimeRoot(root), runckit.WithRuntime(rt.Path))
				first <- createResult{c, err}
			}()
			if err := rt.WaitStalled(ctx, "create"); err != nil {
				rt.Release("create")
				t.Fatal(err)
			}
			second, err2 := runckit.NewContainer(ctx, id, runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
				runckit.WithRuntimeRoot(other))
			forceDeleteOnCleanup(t, second)
			rt.Release("create")
			r1 := <-first
			forceDeleteOnCleanup(t, r1.c)

			if !errdefs.IsAlreadyExists(err2) {
				t.Errorf("NewContainer(%q) with root %q while %q is creating it = %v, want ErrAlreadyExists", id, other, root, err2)
			}
			// Whoever won must still have its init: start it and see it run.
			winner := r1.c
			if winner == nil {
				winner = second
				if !errdefs.IsAlreadyExists(r1.err) {
					t.Errorf("first NewContainer = %v, want success or ErrAlreadyExists", r1.err)
				}
			}
			if winner == nil {
				t.Fatalf("neither NewContainer succeeded: %v; %v", r1.err, err2)
			}
			if err := winner.Start(ctx); err != nil {
				t.Fatalf("start the container that won: %v (its init was killed by the loser's clean-up?)", err)
			}
			time.Sleep(100 * time.Millisecond)
			if st := winner.Init().Status(); st != runckit.StatusRunning {
				t.Errorf("winner's init is %s, want running", st)
			}
		})
	}
}

// TestRegistryOtherProgramCreatesSameID has another program (plain runc)
// create container id in the same root while runckit's runc create for id is
// stalled past the registry check. runckit's create must fail with
// ErrAlreadyExists and leave the other program's container alone. Unfixed,
// runckit's clean-up force-deleted it.
func TestRegistryOtherProgramCreatesSameID(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	id := newID(t)
	rt := faultrunc.New(t)
	rt.Set(t, "create", faultrunc.Fault{Action: faultrunc.Stall, Once: true})

	mine := make(chan createResult, 1)
	go func() {
		c, err := runckit.NewContainer(ctx, id, runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
			runckit.WithRuntimeRoot(root), runckit.WithRuntime(rt.Path))
		mine <- createResult{c, err}
	}()
	if err := rt.WaitStalled(ctx, "create"); err != nil {
		rt.Release("create")
		t.Fatal(err)
	}

	otherBundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	pidFile := filepath.Join(t.TempDir(), "other.pid")
	if out, err := plainRuncCreate(t, root, otherBundle, pidFile, id); err != nil {
		rt.Release("create")
		<-mine
		t.Fatalf("plain runc create: %v: %s", err, out)
	}
	data, _ := os.ReadFile(pidFile)
	otherPid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	t.Cleanup(func() {
		exec.Command("runc", "--root", root, "delete", "--force", id).Run()
		// The other program's init was re-parented to this (subreaper)
		// process: reap it, or it stays a zombie of the test binary.
		if otherPid > 0 {
			var ws syscall.WaitStatus
			syscall.Wait4(otherPid, &ws, 0, nil)
		}
	})

	rt.Release("create")
	r := <-mine
	forceDeleteOnCleanup(t, r.c)
	if !errdefs.IsAlreadyExists(r.err) {
		t.Errorf("NewContainer(%q) racing another program's create = %v, want ErrAlreadyExists", id, r.err)
	}
	time.Sleep(50 * time.Millisecond)
	state, err := exec.Command("runc", "--root", root, "state", id).CombinedOutput()
	if err != nil {
		t.Fatalf("the other program's container is gone: runc state: %v: %s", err, state)
	}
	if !strings.Contains(string(state), `"status": "created"`) {
		t.Errorf("the other program's container is no longer created: %s", state)
	}
	if otherPid <= 0 || !pidAlive(otherPid) {
		t.Errorf("the other program's init (pid %d) is dead", otherPid)
	}
}

// TestRegistryNewContainerAfterOtherProgramCreated covers the plain case:
// the other program's container exists before NewContainer is called.
func TestRegistryNewContainerAfterOtherProgramCreated(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	id := newID(t)
	otherBundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	pidFile := filepath.Join(t.TempDir(), "other.pid")
	// Become the subreaper first, so that the other program's init is
	// re-parented here and can be reaped below.
	if _, err := runckit.NewExitWatcher(); err != nil {
		t.Fatal(err)
	}
	if out, err := plainRuncCreate(t, root, otherBundle, pidFile, id); err != nil {
		t.Fatalf("plain runc create: %v: %s", err, out)
	}
	data, _ := os.ReadFile(pidFile)
	otherPid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	t.Cleanup(func() {
		exec.Command("runc", "--root", root, "delete", "--force", id).Run()
		if otherPid > 0 {
			var ws syscall.WaitStatus
			syscall.Wait4(otherPid, &ws, 0, nil)
		}
	})
	for _, r := range []string{root, root + "/"} {
		c, err := runckit.NewContainer(ctx, id, runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")), runckit.WithRuntimeRoot(r))
		forceDeleteOnCleanup(t, c)
		if !errdefs.IsAlreadyExists(err) {
			t.Errorf("NewContainer(%q) in root %q = %v, want ErrAlreadyExists", id, r, err)
		}
	}
	if otherPid <= 0 || !pidAlive(otherPid) {
		t.Errorf("the other program's init (pid %d) is dead", otherPid)
	}
}

// TestBundleClaimedByOneContainer runs rounds of two concurrent NewContainer
// calls with different IDs on one bundle: exactly one must win each round,
// the other fails with ErrAlreadyExists, and the winner's files are its
// own. Unfixed, both could pass the "bundle in use" check and share
// init.pid: the second container reported the first one's init pid.
func TestBundleClaimedByOneContainer(t *testing.T) {
	ctx := runckittest.Context(t, 3*time.Minute)
	root := runckittest.RuntimeRoot(t)
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	const rounds = 20
	both := 0
	for round := 0; round < rounds; round++ {
		ids := [2]string{newID(t), newID(t)}
		var wg sync.WaitGroup
		var res [2]createResult
		start := make(chan struct{})
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c, err := runckit.NewContainer(ctx, ids[i], bundle, runckit.WithRuntimeRoot(root))
				res[i] = createResult{c, err}
			}()
		}
		close(start)
		wg.Wait()
		var won []*runckit.Container
		for i, r := range res {
			switch {
			case r.err == nil:
				won = append(won, r.c)
			case !errdefs.IsAlreadyExists(r.err):
				t.Errorf("round %d: NewContainer(%q) = %v, want success or ErrAlreadyExists", round, ids[i], r.err)
			}
		}
		if len(won) == 2 {
			both++
			if p0, p1 := won[0].Init().Pid(), won[1].Init().Pid(); p0 == p1 {
				t.Errorf("round %d: containers %s and %s share init pid %d", round, won[0].ID(), won[1].ID(), p0)
			}
		}
		if len(won) != 1 {
			t.Errorf("round %d: %d of 2 NewContainer calls on one bundle succeeded, want exactly 1 (%v; %v)",
				round, len(won), res[0].err, res[1].err)
		}
		for _, c := range won {
			if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
				t.Fatalf("round %d: delete %s: %v", round, c.ID(), err)
			}
		}
		// Everything runckit put in the bundle is gone with the container.
		entries, _ := os.ReadDir(bundle)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if len(names) != 1 || names[0] != "config.json" {
			t.Fatalf("round %d: bundle holds %v after delete, want only config.json", round, names)
		}
	}
	if both > 0 {
		t.Errorf("%d of %d rounds let two containers share one bundle", both, rounds)
	}
}

// TestBundleFilesNameTheContainer checks that the pid and log files runckit
// keeps in the bundle carry the container's ID, so that a stale file left
// by another container can never be taken for this one's.
func TestBundleFilesNameTheContainer(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	entries, err := os.ReadDir(c.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		switch n := ent.Name(); {
		case n == "config.json", n == "runckit.json":
		case strings.HasSuffix(n, ".pid") || strings.Contains(n, "log"):
			if !strings.Contains(n, c.ID()) {
				t.Errorf("bundle file %s does not name container %s: a stale one could be taken for another container's", n, c.ID())
			}
		}
	}
}
