package runckit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// mountLine returns the /proc/self/mountinfo lines for mount point path.
func mountLine(path string) string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// Options reach the mount as mount(2) would apply them: per-mount flags,
// superblock flags and filesystem parameters; a bad parameter is refused
// with the filesystem's own message.
func TestMountSafetyOptions(t *testing.T) {
	bundle := t.TempDir()
	os.Mkdir(filepath.Join(bundle, "m"), 0o755)
	target := filepath.Join(bundle, "m")
	rm, err := mountRootfs(bundle, Mount{Type: "tmpfs", Source: "optfs", Target: "m",
		Options: []string{"ro", "nosuid", "nodev", "noexec", "noatime", "size=2m", "mode=711"}})
	if err != nil {
		t.Fatal(err)
	}
	line := mountLine(target)
	for _, want := range []string{" ro,", "nosuid", "nodev", "noexec", "noatime", "optfs", "size=2048k", "mode=711"} {
		if !strings.Contains(line, want) {
			t.Errorf("mountinfo %q lacks %q", line, want)
		}
	}
	if err := rm.unmount(); err != nil {
		t.Fatal(err)
	}
	if l := mountLine(target); l != "" {
		t.Errorf("still mounted: %s", l)
	}
	if err := rm.unmount(); err != nil {
		t.Errorf("second unmount = %v, want nil", err)
	}

	_, err = mountRootfs(bundle, Mount{Type: "tmpfs", Source: "x", Target: "m", Options: []string{"bogus=1"}})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown tmpfs option = %v, want ErrInvalidArgument naming it", err)
	}
	_, err = mountRootfs(bundle, Mount{Type: "tmpfs", Source: "x", Target: "m", Options: []string{"remount"}})
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("remount = %v, want ErrInvalidArgument", err)
	}
	if l := mountLine(target); l != "" {
		t.Errorf("a refused mount left %s", l)
	}

	// A read-only bind is read-only from the start.
	src := t.TempDir()
	rm, err = mountRootfs(bundle, Mount{Source: src, Target: "m", Options: []string{"rbind", "ro"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err == nil {
		t.Error("write into a read-only bind succeeded")
	}
	rm.unmount()
}

// A mount put over runckit's mount is not unmounted in its stead: unmount
// refuses and leaves both.
func TestMountSafetyCoveredMountLeftAlone(t *testing.T) {
	bundle := t.TempDir()
	target := filepath.Join(bundle, "m")
	os.Mkdir(target, 0o755)
	rm, err := mountRootfs(bundle, Mount{Type: "tmpfs", Source: "ours", Target: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("theirs", target, "tmpfs", 0, ""); err != nil {
		rm.unmount()
		t.Fatal(err)
	}
	err = rm.unmount()
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("unmount under another mount = %v, want ErrFailedPrecondition", err)
	}
	if !strings.Contains(mountLine(target), "theirs") {
		t.Error("the covering mount was unmounted")
	}
	unix.Unmount(target, unix.MNT_DETACH) // theirs
	if err := rm.unmount(); err != nil {
		t.Errorf("unmount once uncovered = %v", err)
	}
	if l := mountLine(target); l != "" {
		t.Errorf("still mounted: %s", l)
	}
}

// unmountRecorded (adoption after a restart, no fd at hand) resolves the
// recorded target inside the bundle: a symlink swapped into the path is
// refused and the host mount it points at survives.
func TestMountSafetyUnmountRecorded(t *testing.T) {
	bundle := t.TempDir()
	victim := t.TempDir()
	os.MkdirAll(filepath.Join(bundle, "a", "b"), 0o755)
	os.MkdirAll(filepath.Join(victim, "b"), 0o755)
	target := filepath.Join(bundle, "a", "b")
	rm, err := mountRootfs(bundle, Mount{Type: "tmpfs", Source: "ours", Target: "a/b"})
	if err != nil {
		t.Fatal(err)
	}
	defer rm.unmount()
	if err := unix.Mount("victimfs", filepath.Join(victim, "b"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(victim, "b"), unix.MNT_DETACH)
	os.Rename(filepath.Join(bundle, "a"), filepath.Join(bundle, "a2"))
	os.Symlink(victim, filepath.Join(bundle, "a"))
	if err := unmountRecorded(bundle, target); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unmountRecorded through a symlink = %v, want ErrInvalidArgument", err)
	}
	if mountLine(filepath.Join(victim, "b")) == "" {
		t.Fatal("the host mount behind the symlink was unmounted")
	}
	// Without the swap, the recorded target is unmounted.
	os.Remove(filepath.Join(bundle, "a"))
	os.Rename(filepath.Join(bundle, "a2"), filepath.Join(bundle, "a"))
	if err := unmountRecorded(bundle, target); err != nil {
		t.Fatal(err)
	}
	if l := mountLine(target); l != "" {
		t.Errorf("still mounted: %s", l)
	}
	// Nothing mounted there: nothing to do.
	if err := unmountRecorded(bundle, target); err != nil {
		t.Errorf("unmountRecorded of a plain directory = %v", err)
	}
}
