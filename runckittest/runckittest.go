// Package runckittest provides what tests need to run real containers: a
// busybox root filesystem, OCI specs and bundles for it, and a private runc
// state root. It is to runckit what net/http/httptest is to net/http.
//
// It needs root, runc and busybox-static ("apt-get install runc
// busybox-static" on Debian). RUNCKIT_TEST_RUNTIME picks another OCI
// runtime, such as crun, for the tests that use Runtime.
package runckittest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
)

// BusyboxPath is where busybox-static installs its binary on Debian.
var BusyboxPath = "/bin/busybox"

var (
	rootfsOnce sync.Once
	rootfsDir  string
	rootfsErr  error
)

// RuntimeEnv is the environment variable that names the OCI runtime tests
// run (a name looked up in PATH, or a path); unset or empty means runc.
const RuntimeEnv = "RUNCKIT_TEST_RUNTIME"

// Runtime returns the OCI runtime binary tests should pass to
// runckit.WithRuntime: $RUNCKIT_TEST_RUNTIME, or "runc".
func Runtime() string {
	if rt := os.Getenv(RuntimeEnv); rt != "" {
		return rt
	}
	return "runc"
}

// Check reports why real containers can not run here, or nil if they can.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("runckittest: containers need root")
	}
	if rt := Runtime(); rt != "runc" {
		if _, err := exec.LookPath(rt); err != nil {
			return fmt.Errorf("runckittest: %s=%s not found: %w", RuntimeEnv, rt, err)
		}
	} else if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("runckittest: runc not in PATH (apt-get install runc): %w", err)
	}
	if err := isStaticBusybox(BusyboxPath); err != nil {
		return err
	}
	return nil
}

func isStaticBusybox(path string) error {
	out, err := exec.Command("file", "-L", path).Output()
	if err != nil {
		// file(1) may be missing; trust the package.
		if _, serr := os.Stat(path); serr != nil {
			return fmt.Errorf("runckittest: %s missing (apt-get install busybox-static): %w", path, serr)
		}
		return nil
	}
	if strings.Contains(string(out), "dynamically linked") {
		return fmt.Errorf("runckittest: %s is dynamically linked; install busybox-static", path)
	}
	return nil
}

// Rootfs returns a busybox root filesystem shared by the whole test binary,
// built on first use. Containers mount it read-only; Cleanup removes it.
func Rootfs(t testing.TB) string {
	t.Helper()
	dir, err := SharedRootfs()
	if err != nil {
		t.Fatalf("build busybox rootfs: %v", err)
	}
	return dir
}

// SharedRootfs is Rootfs for programs that are not tests.
func SharedRootfs() (string, error) {
	rootfsOnce.Do(func() { rootfsDir, rootfsErr = buildRootfs() })
	return rootfsDir, rootfsErr
}

// Cleanup removes the shared rootfs. Call it from TestMain after m.Run.
func Cleanup() {
	if rootfsDir != "" {
		os.RemoveAll(rootfsDir)
	}
}

func buildRootfs() (string, error) {
	if err := Check(); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "runckittest-rootfs-")
	if err != nil {
		return "", err
	}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	data, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return "", err
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !os.IsExist(err) {
			return "", err
		}
	}
	os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc", "group"), []byte("root:x:0:\n"), 0o644)
	return dir, nil
}

// ProcessSpec returns a process running args as root in /, for Exec.
func ProcessSpec(args ...string) *specs.Process {
	return &specs.Process{
		Args: args,
		Cwd:  "/",
		Env:  []string{"PATH=/bin", "HOME=/root", "TERM=xterm"},
		User: specs.User{UID: 0, GID: 0},
		Capabilities: &specs.LinuxCapabilities{
			Bounding:  defaultCaps,
			Effective: defaultCaps,
			Permitted: defaultCaps,
		},
		NoNewPrivileges: true,
		Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
	}
}

var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE"}

// SpecVersion is the ociVersion of the specs this package makes. Every
// field they set is in runtime-spec 1.0, and crun 1.8 (Debian 12's)
// refuses a config.json whose version does not contain "1.0" ("unknown
// version specified"), so they say 1.0.2 rather than specs.Version.
const SpecVersion = "1.0.2"

// Spec returns an OCI spec that runs args in the shared busybox rootfs,
// read-only with a tmpfs /tmp, in new PID, mount, IPC, UTS and network
// namespaces: what `runc spec` gives, minus the parts busybox does not need.
func Spec(t testing.TB, args ...string) *specs.Spec {
	t.Helper()
	return NewSpec(Rootfs(t), args...)
}

// NewSpec is Spec for programs that are not tests: it runs args in rootfs.
func NewSpec(rootfs string, args ...string) *specs.Spec {
	root := rootfs
	return &specs.Spec{
		Version:  SpecVersion,
		Process:  ProcessSpec(args...),
		Root:     &specs.Root{Path: root, Readonly: true},
		Hostname: "runckittest",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// Bundle writes spec as config.json in a new temporary bundle directory,
// removed when the test ends.
func Bundle(t testing.TB, spec *specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteBundle(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WriteBundle writes spec as dir/config.json, making dir if needed.
func WriteBundle(dir string, spec *specs.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600)
}

// RuntimeRoot returns a private runtime state root for the test, and checks
// when the test ends that no container state was left in it.
func RuntimeRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "runckittest-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			t.Errorf("runc state left behind in %s: %s (%s)", dir, e.Name(), describeState(filepath.Join(dir, e.Name())))
			exec.Command(Runtime(), "--root", dir, "delete", "--force", e.Name()).Run()
		}
		os.RemoveAll(dir)
	})
	return dir
}

// Recorder is an EventSink that keeps every event, for assertions.
type Recorder struct {
	mu     sync.Mutex
	events []runckit.Event
	notify chan struct{}
}

// Send records e.
func (r *Recorder) Send(e runckit.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	if r.notify != nil {
		close(r.notify)
		r.notify = nil
	}
	r.mu.Unlock()
}

// Events returns a copy of what was recorded so far.
func (r *Recorder) Events() []runckit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]runckit.Event(nil), r.events...)
}

// WaitFor waits until an event satisfying match has been recorded.
func (r *Recorder) WaitFor(ctx context.Context, match func(runckit.Event) bool) (runckit.Event, error) {
	for {
		r.mu.Lock()
		for _, e := range r.events {
			if match(e) {
				r.mu.Unlock()
				return e, nil
			}
		}
		if r.notify == nil {
			r.notify = make(chan struct{})
		}
		ch := r.notify
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return runckit.Event{}, ctx.Err()
		}
	}
}

// TimeScaleEnv is the environment variable that stretches the deadlines
// of Context by a factor (an integer, 1 if unset): on a machine many times
// slower than the ones the tests' budgets were written for, such as the
// cgroup v2 lane's emulated guest.
const TimeScaleEnv = "RUNCKIT_TEST_TIME_SCALE"

// Context returns a context that ends with the test or after d, times
// $RUNCKIT_TEST_TIME_SCALE.
func Context(t testing.TB, d time.Duration) context.Context {
	if n, err := strconv.Atoi(os.Getenv(TimeScaleEnv)); err == nil && n > 1 {
		d *= time.Duration(n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// describeState lists what a leftover state directory holds, with sizes
// and modification times, for the report of a leak.
func describeState(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			parts = append(parts, fmt.Sprintf("%s %d bytes %s", e.Name(), fi.Size(), fi.ModTime().Format("15:04:05.000000")))
		}
	}
	return fmt.Sprintf("holds [%s], now %s", strings.Join(parts, ", "), time.Now().Format("15:04:05.000000"))
}
