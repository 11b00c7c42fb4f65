package runckit_test

import (
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

func TestCheckpointOfStoppedContainerRefused(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"))
	img := filepath.Join(t.TempDir(), "img")
	if err := c.Checkpoint(ctx, runckit.CheckpointOptions{ImagePath: img}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Checkpoint of a created container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Checkpoint(ctx, runckit.CheckpointOptions{ImagePath: img}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Checkpoint of a stopped container = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Checkpoint(ctx, runckit.CheckpointOptions{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Checkpoint without an image path = %v, want ErrInvalidArgument", err)
	}
}

func TestRestoreFromMissingImage(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "10"))
	missing := filepath.Join(t.TempDir(), "no-image")
	_, err := runckit.Restore(ctx, "restored", bundle, runckit.RestoreOptions{ImagePath: missing}, runckit.WithRuntimeRoot(root))
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Restore from a missing image = %v, want ErrNotFound naming %s", err, missing)
	}
	// An image directory that holds no checkpoint: runc and CRIU fail, and
	// nothing is left behind (RuntimeRoot checks the state dir).
	_, err = runckit.Restore(ctx, "restored", bundle, runckit.RestoreOptions{ImagePath: t.TempDir()}, runckit.WithRuntimeRoot(root))
	if err == nil {
		t.Fatal("Restore from an empty image directory succeeded")
	}
	t.Logf("restore from an empty image: %v", err)
}

// The round trip needs a working CRIU; Debian's 3.17 fails `criu check` on
// this kernel, so the test says so and skips there.
func TestCheckpointRestoreRoundTrip(t *testing.T) {
	if out, err := exec.Command("criu", "check").CombinedOutput(); err != nil {
		t.Skipf("criu check failed: %v: %s", err, strings.TrimSpace(string(out)))
	}
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	img := filepath.Join(t.TempDir(), "img")
	if err := c.Checkpoint(ctx, runckit.CheckpointOptions{ImagePath: img}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil {
		t.Fatalf("init after checkpoint: %v, %v", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := runckit.Restore(ctx, c.ID(), c.Bundle(), runckit.RestoreOptions{ImagePath: img},
		runckit.WithRuntimeRoot(e.root))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := r.State(ctx); st.Status != runckit.StatusRunning {
		t.Errorf("restored status = %s", st.Status)
	}
	if err := r.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.Wait(ctx)
	if err := r.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}
