package runckit_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

func TestInvalidIDsRejectedBeforeDisk(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "true"))
	for _, id := range []string{
		"", strings.Repeat("a", 77), "a/b", "..", "a..b", "a b", "-a", "a-", "a__b", "a.-b", "ä", "a\x00b",
	} {
		_, err := runckit.NewContainer(ctx, id, bundle, runckit.WithRuntimeRoot(root))
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("NewContainer(%q) = %v, want ErrInvalidArgument", id, err)
		}
	}
	for _, id := range []string{"a", "web-1", "a.b_c-d", strings.Repeat("x", 76)} {
		c, err := runckit.NewContainer(ctx, id, bundle, runckit.WithRuntimeRoot(root))
		if err != nil {
			t.Errorf("NewContainer(%q) = %v, want success", id, err)
			continue
		}
		if err := c.Delete(ctx); err != nil {
			t.Errorf("Delete(%q) = %v", id, err)
		}
	}
	entries, _ := os.ReadDir(bundle)
	for _, e := range entries {
		if e.Name() != "config.json" {
			t.Errorf("bundle holds %s after the containers were deleted", e.Name())
		}
	}
}

func TestInvalidExecIDs(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	for _, id := range []string{"", "x/y", "..", "a b"} {
		if _, err := c.Exec(ctx, id, runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Exec(%q) = %v, want ErrInvalidArgument", id, err)
		}
	}
	if _, err := c.Exec(ctx, "noargs", runckittest.ProcessSpec(), runckit.Stdio{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Exec with no args = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Exec(ctx, "dup", runckittest.ProcessSpec("true"), runckit.Stdio{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "dup", runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate Exec = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.Process("missing"); !errdefs.IsNotFound(err) {
		t.Errorf("Process(missing) = %v, want ErrNotFound", err)
	}
}

func TestBundleErrorsNamePath(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := runckit.NewContainer(ctx, "b1", missing, runckit.WithRuntimeRoot(root))
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing bundle: %v, want ErrNotFound naming %s", err, missing)
	}
	empty := t.TempDir()
	_, err = runckit.NewContainer(ctx, "b2", empty, runckit.WithRuntimeRoot(root))
	if want := filepath.Join(empty, "config.json"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("missing config.json: %v, want ErrNotFound naming %s", err, want)
	}
}

func TestRuntimeNotFound(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	_, err := runckit.NewContainer(ctx, "r1", runckittest.Bundle(t, runckittest.Spec(t, "true")),
		runckit.WithRuntimeRoot(runckittest.RuntimeRoot(t)), runckit.WithRuntime("no-such-runc"))
	if err == nil || !strings.Contains(err.Error(), "no-such-runc") || !strings.Contains(err.Error(), "apt-get install runc") {
		t.Errorf("err = %v, want it to name the binary and how to install runc", err)
	}
}

func TestDuplicateContainerID(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"))
	_, err := runckit.NewContainer(ctx, c.ID(), runckittest.Bundle(t, runckittest.Spec(t, "true")), runckit.WithRuntimeRoot(e.root))
	if !errdefs.IsAlreadyExists(err) {
		t.Errorf("second NewContainer = %v, want ErrAlreadyExists", err)
	}
	// One bundle serves one container at a time.
	_, err = runckit.NewContainer(ctx, "other", c.Bundle(), runckit.WithRuntimeRoot(e.root))
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), c.Bundle()) {
		t.Errorf("NewContainer on a bundle in use = %v, want ErrAlreadyExists naming it", err)
	}
}

// A create that fails in runc reports runc's own message and leaves
// nothing: no runc state (checked by RuntimeRoot), no mount, no bundle file.
func TestCreateFailureCleansUp(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "/no/such/binary"))
	os.Mkdir(filepath.Join(bundle, "scratch"), 0o755)
	var out strings.Builder
	_, err := runckit.NewContainer(ctx, "fails", bundle,
		runckit.WithRuntimeRoot(root),
		runckit.WithStdio(runckit.Stdio{Stdout: &out}),
		runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "scratch"}))
	if err == nil {
		t.Fatal("NewContainer succeeded with a missing binary")
	}
	var msg string
	if err != nil {
		msg = err.Error()
	}
	if !strings.Contains(msg, "/no/such/binary") || !strings.Contains(msg, `"fails"`) || !strings.Contains(msg, "create") {
		t.Errorf("error %q should carry runc's message, the container ID and the step", msg)
	}
	entries, _ := os.ReadDir(bundle)
	for _, e := range entries {
		if e.Name() != "config.json" && e.Name() != "scratch" {
			t.Errorf("bundle holds %s after a failed create", e.Name())
		}
	}
	if data, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(data), filepath.Join(bundle, "scratch")) {
		t.Error("scratch mount left after failed create")
	}
	if _, err := os.Stat(filepath.Join(root, "fails")); err == nil {
		t.Error("runc state left after failed create")
	}
	// The ID is free again.
	c, err := runckit.NewContainer(ctx, "fails", runckittest.Bundle(t, runckittest.Spec(t, "true")), runckit.WithRuntimeRoot(root))
	if err != nil {
		t.Fatalf("reusing the ID after a failed create: %v", err)
	}
	c.Delete(ctx)
}

// The scratch mount above must exist while the container does.
func TestRootfsMountLifetime(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "echo mounted > /scratch/x && cat /scratch/x")
	spec.Root.Readonly = false
	bundle := runckittest.Bundle(t, spec)
	// The bundle's rootfs is a tmpfs holding a copy of the shared busybox.
	rootfs := filepath.Join(bundle, "rootfs")
	os.Mkdir(rootfs, 0o755)
	spec.Root.Path = "rootfs"
	var out strings.Builder
	c, err := runckit.NewContainer(ctx, newID(t), bundle,
		runckit.WithRuntimeRoot(e.root),
		runckit.WithSpec(spec),
		runckit.WithStdio(runckit.Stdio{Stdout: &out}),
		runckit.WithRootfsMounts(
			runckit.Mount{Type: "bind", Source: runckittest.Rootfs(t), Options: []string{"rbind", "ro"}},
		))
	if err == nil {
		// Read-only rootfs: the write must fail, proving the mount is in place.
		c.Start(ctx)
		st, _ := c.Wait(ctx)
		if st.Success() {
			t.Errorf("write to a read-only bind-mounted rootfs succeeded")
		}
		if err := c.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Fatalf("NewContainer: %v", err)
	}
	if data, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(data), rootfs) {
		t.Errorf("%s still mounted after Delete", rootfs)
	}
}

func TestOperationsOnDeletedContainer(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"))
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checks := map[string]error{
		"Start":  c.Start(ctx),
		"Kill":   c.Kill(ctx, 9),
		"Delete": c.Delete(ctx),
	}
	_, checks["Exec"] = c.Exec(ctx, "x", runckittest.ProcessSpec("true"), runckit.Stdio{})
	_, checks["State"] = c.State(ctx)
	for name, err := range checks {
		if !errdefs.IsNotFound(err) {
			t.Errorf("%s on a deleted container = %v, want ErrNotFound", name, err)
		}
	}
}

func TestRunningContainerDeleteNeedsForce(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	if err := c.Delete(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Delete of a running container = %v, want ErrFailedPrecondition", err)
	}
	if st, _ := c.State(ctx); st.Status != runckit.StatusRunning {
		t.Errorf("status after refused delete = %s, want running", st.Status)
	}
	if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != "create start exit delete" {
		t.Errorf("events = %s", got)
	}
}

func TestBadSignalAndStdio(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	if err := c.Kill(ctx, 0); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Kill(0) = %v, want ErrInvalidArgument", err)
	}
	if err := c.Kill(ctx, 65); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Kill(65) = %v, want ErrInvalidArgument", err)
	}
	for name, s := range map[string]runckit.Stdio{
		"reader and path": {Stdin: strings.NewReader(""), StdinPath: "/dev/null"},
		"bad scheme":      {StdoutPath: "http:///x"},
		"relative":        {StdoutPath: "fifo://relative/x"},
		"terminal stderr": {Terminal: true, Stderr: os.Stderr},
	} {
		if _, err := c.Exec(ctx, "bad", runckittest.ProcessSpec("true"), s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: Exec = %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := c.Exec(ctx, "bin", runckittest.ProcessSpec("true"), runckit.Stdio{StdoutPath: "binary:///no/such/logger"}); !errdefs.IsNotFound(err) {
		t.Errorf("binary URI of a missing logger: %v, want ErrNotFound", err)
	}
}

var _ = errors.Is
var _ context.Context

// Runtime options are persisted in the bundle, mode 0600, while the
// container exists, and removed with it.
func TestRuntimeOptionsPersisted(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"), runckit.WithRuntimeOptions(runckit.RuntimeOptions{NoNewKeyring: true, NoPivotRoot: true}))
	path := filepath.Join(c.Bundle(), "runckit.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600", path, fi.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), `"no_new_keyring":true`) || !strings.Contains(string(data), `"no_pivot_root":true`) {
		t.Errorf("%s = %s, want the options", path, data)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s left after Delete", path)
	}
}
