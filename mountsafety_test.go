package runckit_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// mountedAt reports whether path is a mount point in this mount namespace.
func mountedAt(path string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// detachAllUnder removes every mount at or under dir, for cleanup after a
// failure on code that leaves them.
func detachAllUnder(dir string) {
	for i := 0; i < 16 && len(mountsUnder(dir)) > 0; i++ {
		m := mountsUnder(dir)
		unix.Unmount(m[len(m)-1], unix.MNT_DETACH)
	}
}

// A symlink in the bundle that points outside it is refused at create with
// ErrInvalidArgument, whichever component it is, and nothing is mounted on
// the host directory it names.
func TestMountSafetySymlinkInBundleRefused(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.MkdirAll(filepath.Join(victim, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { detachAllUnder(victim) })
	cases := []struct {
		name   string
		target string
		setup  func(bundle string) error
	}{
		{"rootfs-is-symlink", "", func(b string) error { return os.Symlink(victim, filepath.Join(b, "rootfs")) }},
		{"last-component", "rootfs/x", func(b string) error {
			os.Mkdir(filepath.Join(b, "rootfs"), 0o755)
			return os.Symlink(victim, filepath.Join(b, "rootfs", "x"))
		}},
		{"middle-component", "rootfs/x/sub", func(b string) error {
			os.Mkdir(filepath.Join(b, "rootfs"), 0o755)
			return os.Symlink(victim, filepath.Join(b, "rootfs", "x"))
		}},
		{"relative-symlink-out", "up/sub", func(b string) error {
			rel, err := filepath.Rel(b, victim)
			if err != nil {
				return err
			}
			return os.Symlink(rel, filepath.Join(b, "up"))
		}},
		// Even a symlink that stays inside the bundle is refused: the
		// target must be a real directory of the bundle.
		{"symlink-within-bundle", "alias", func(b string) error {
			os.Mkdir(filepath.Join(b, "real"), 0o755)
			return os.Symlink("real", filepath.Join(b, "alias"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bundle := runckittest.Bundle(t, runckittest.Spec(t, "true"))
			if err := tc.setup(bundle); err != nil {
				t.Fatal(err)
			}
			c, err := runckit.NewContainer(ctx, newID(t), bundle,
				runckit.WithRuntimeRoot(root),
				runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: tc.target}))
			if m := mountsUnder(victim); len(m) > 0 {
				t.Errorf("mounted on the host directory behind the symlink: %v", m)
			}
			if err == nil {
				t.Errorf("NewContainer with mount target %q through a symlink succeeded", tc.target)
				dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c.Delete(dctx, runckit.DeleteForce())
			} else if !errdefs.IsInvalidArgument(err) {
				t.Errorf("NewContainer = %v, want ErrInvalidArgument", err)
			} else if !strings.Contains(err.Error(), "symlink") {
				t.Errorf("error %q should say that the target goes through a symlink", err)
			}
			detachAllUnder(victim)
			if m := mountsUnder(bundle); len(m) > 0 {
				t.Errorf("mounts left in the bundle: %v", m)
				detachAllUnder(bundle)
			}
			if _, err := os.Stat(filepath.Join(bundle, "runckit.json")); err == nil {
				t.Error("runckit.json left after a refused create")
			}
		})
	}
}

// writableRootfs makes bundle/rootfs a private, writable copy of the
// busybox rootfs (the binary and the applets the tests use).
func writableRootfs(t *testing.T, bundle string) string {
	t.Helper()
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(filepath.Join(runckittest.Rootfs(t), "bin", "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "mv", "ln", "ls", "true"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return rootfs
}

// A process in a container with a writable rootfs swaps a component of a
// rootfs mount's target for a symlink to a host directory that has a mount
// of its own under it. Delete must leave that host mount alone and still
// remove the mount it made, which now sits at the renamed path.
func TestMountSafetyDeleteAfterSymlinkSwap(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	victim := filepath.Join(t.TempDir(), "victim")
	hostMount := filepath.Join(victim, "b")
	if err := os.MkdirAll(hostMount, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("victimfs", hostMount, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { detachAllUnder(victim) })

	spec := runckittest.Spec(t, "sh", "-c", "mv /a /a2 && ln -s "+victim+" /a && ls /a2/b")
	bundle := runckittest.Bundle(t, spec)
	rootfs := writableRootfs(t, bundle)
	spec.Root = &specs.Root{Path: "rootfs"}
	if err := os.MkdirAll(filepath.Join(rootfs, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { detachAllUnder(bundle) })
	c, err := runckit.NewContainer(ctx, newID(t), bundle,
		runckit.WithRuntimeRoot(e.root),
		runckit.WithSpec(spec),
		runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "runckit-b", Target: "rootfs/a/b"}))
	if err != nil {
		t.Fatalf("NewContainer: %v", err)
	}
	if !mountedAt(filepath.Join(rootfs, "a", "b")) {
		t.Fatal("rootfs mount not in place after create")
	}
	if err := c.Start(ctx); err != nil {
		c.Delete(ctx, runckit.DeleteForce())
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil || !st.Success() {
		c.Delete(ctx, runckit.DeleteForce())
		t.Fatalf("the swap in the container failed: %v, %v", st, err)
	}
	if fi, err := os.Lstat(filepath.Join(rootfs, "a")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("rootfs/a is not the container's symlink: %v, %v", fi, err)
	}
	if !mountedAt(filepath.Join(rootfs, "a2", "b")) {
		t.Fatal("the mount did not move with the rename")
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !mountedAt(hostMount) {
		t.Errorf("Delete unmounted the host's %s through the container's symlink", hostMount)
	}
	if m := mountsUnder(bundle); len(m) > 0 {
		t.Errorf("Delete left the container's mount: %v", m)
	}
}
