package runckittest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
)

// Options say what Start runs. The zero value runs the shared busybox
// rootfs's sh with no arguments; set Args or Spec.
type Options struct {
	// Rootfs is the container's lower, read-only root filesystem; the
	// container writes to a layer of its own over it (overlayfs), removed
	// with it. The default is the shared busybox rootfs.
	Rootfs string
	// Spec is the container's spec; its Root is replaced by the writable
	// layer. The default is NewSpec with Args.
	Spec *specs.Spec
	// Args replace the spec's process arguments when set.
	Args []string
	// Files are written into the container's root filesystem before it
	// starts. A path under a mount of the spec (/tmp, /dev...) is hidden by
	// that mount.
	Files []File
	// HostNetwork runs the container in the host's network namespace
	// instead of a private one with only loopback.
	HostNetwork bool
	// Wait is waited for, in order, once the container has started.
	Wait []Strategy
	// Options are passed to runckit.NewContainer after Start's own.
	Options []runckit.Option
}

// File is a file to put in a container before it starts.
type File struct {
	Path string      // absolute, inside the container
	Data []byte      // content
	Mode os.FileMode // permission bits; 0 is 0644
	UID  int
	GID  int
}

// Container is a running container of a test, removed with everything it
// made when the test ends.
type Container struct {
	*runckit.Container
	// Events records the container's event stream.
	Events *Recorder
	tb     testing.TB
	out    *logBuffer
	bundle string
}

// Start starts a container for the test, waits for opts.Wait, and
// registers with t.Cleanup the removal of the container, its writable
// layer and its bundle; if the test failed, the cleanup first writes the
// container's output and events with t.Log. Any failure is fatal to the
// test. Start is safe with t.Parallel and -count=N: each container has a
// fresh ID, bundle and network namespace.
func Start(t testing.TB, opts Options) *Container {
	t.Helper()
	c, err := start(t, opts)
	if err != nil {
		if c != nil {
			t.Fatalf("runckittest: %v\n%s", err, c.report())
		}
		t.Fatalf("runckittest: %v", err)
	}
	return c
}

func start(t testing.TB, opts Options) (*Container, error) {
	rootfs := opts.Rootfs
	if rootfs == "" {
		var err error
		if rootfs, err = SharedRootfs(); err != nil {
			return nil, err
		}
	}
	spec := opts.Spec
	if spec == nil {
		spec = NewSpec(rootfs, opts.Args...)
	} else if len(opts.Args) > 0 {
		spec.Process.Args = opts.Args
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path, spec.Root.Readonly = "rootfs", false
	if opts.HostNetwork && spec.Linux != nil {
		var ns []specs.LinuxNamespace
		for _, n := range spec.Linux.Namespaces {
			if n.Type != specs.NetworkNamespace {
				ns = append(ns, n)
			}
		}
		spec.Linux.Namespaces = ns
	}

	bundle, err := os.MkdirTemp("", "runckittest-bundle-")
	if err != nil {
		return nil, err
	}
	c := &Container{Events: &Recorder{}, tb: t, out: newLogBuffer(), bundle: bundle}
	overlay, err := OverlayMount(bundle, rootfs)
	if err != nil {
		os.RemoveAll(bundle)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ropts := append([]runckit.Option{
		runckit.WithSpec(spec),
		runckit.WithRootfsMounts(overlay),
		runckit.WithEventSink(c.Events),
		runckit.WithStdio(runckit.Stdio{Stdout: c.out, Stderr: c.out}),
	}, opts.Options...)
	rc, err := runckit.NewContainer(ctx, containerID(t), bundle, ropts...)
	if err != nil {
		os.RemoveAll(bundle)
		return nil, err
	}
	c.Container = rc
	t.Cleanup(c.cleanup)
	for _, f := range opts.Files {
		if err := c.writeFile(f); err != nil {
			return c, err
		}
	}
	if err := rc.Start(ctx); err != nil {
		return c, err
	}
	for _, w := range opts.Wait {
		if err := w.WaitFor(context.Background(), c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// OverlayMount makes the writable layer of a container over lower, in the
// bundle (upper/ and work/), and returns the mount that puts it at the
// bundle's rootfs/, for runckit.WithRootfsMounts.
func OverlayMount(bundle, lower string) (runckit.Mount, error) {
	for _, d := range []string{"rootfs", "upper", "work"} {
		if err := os.MkdirAll(filepath.Join(bundle, d), 0o755); err != nil {
			return runckit.Mount{}, err
		}
	}
	if strings.ContainsAny(lower, ",:") {
		return runckit.Mount{}, fmt.Errorf("runckittest: lower directory %q holds ',' or ':', which overlayfs options can not carry: %w", lower, errdefs.ErrInvalidArgument)
	}
	return runckit.Mount{
		Type: "overlay", Source: "overlay", Target: "rootfs",
		Options: []string{"lowerdir=" + lower, "upperdir=" + filepath.Join(bundle, "upper"), "workdir=" + filepath.Join(bundle, "work")},
	}, nil
}

var idSeq struct {
	sync.Mutex
	n int
}

// containerID names a container after its test, unique across parallel
// tests, -count runs and test processes.
func containerID(t testing.TB) string {
	idSeq.Lock()
	idSeq.n++
	n := idSeq.n
	idSeq.Unlock()
	var rnd [4]byte
	rand.Read(rnd[:])
	name := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("rkt-%s-%d-%x", strings.Trim(name, "-"), n, rnd)
}

func (c *Container) cleanup() {
	if c.tb.Failed() {
		// Events published so far reach the recorder before the report.
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.Flush(fctx)
		cancel()
		c.tb.Logf("runckittest: container %s:\n%s", c.ID(), c.report())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
		c.tb.Errorf("runckittest: delete container %s: %v", c.ID(), err)
	}
	if err := os.RemoveAll(c.bundle); err != nil {
		c.tb.Errorf("runckittest: remove bundle: %v", err)
	}
}

// report is the container's output and event stream, for a failed test.
func (c *Container) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- output ---\n%s", c.out.String())
	if !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	b.WriteString("--- events ---\n")
	for _, e := range c.Events.Events() {
		fmt.Fprintf(&b, "%v\n", e)
	}
	return b.String()
}

// Output is what the container's init has written so far, stdout and
// stderr together.
func (c *Container) Output() string { return c.out.String() }

// HTTPClient returns a client whose connections are made inside the
// container's network namespace: http://localhost:PORT/ is the container.
func (c *Container) HTTPClient() *http.Client {
	tr := &http.Transport{DialContext: c.DialContext, DisableKeepAlives: true}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// openInRoot opens name inside the directory dirfd, resolving every
// symlink as the container would, never outside it.
func openInRoot(dirfd int, name string, flags uint64, mode uint64) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
}

// writeFile puts f in the container's writable layer, through the merged
// root, before start.
func (c *Container) writeFile(f File) error {
	if !path.IsAbs(f.Path) {
		return fmt.Errorf("runckittest: file path %q must be absolute: %w", f.Path, errdefs.ErrInvalidArgument)
	}
	root, err := unix.Open(filepath.Join(c.bundle, "rootfs"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	dir := path.Dir(f.Path)
	// Parents are made one by one, each resolved inside the root.
	parts := strings.Split(strings.Trim(dir, "/"), "/")
	for i := range parts {
		if parts[i] == "" {
			continue
		}
		p := strings.Join(parts[:i+1], "/")
		if fd, err := openInRoot(root, p, unix.O_PATH|unix.O_DIRECTORY, 0); err == nil {
			unix.Close(fd)
			continue
		}
		pfd, err := openInRoot(root, "/"+strings.Join(parts[:i], "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return fmt.Errorf("runckittest: copy %s in: %w", f.Path, err)
		}
		err = unix.Mkdirat(pfd, parts[i], 0o755)
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("runckittest: copy %s in: mkdir %s: %w", f.Path, p, err)
		}
	}
	mode := f.Mode.Perm()
	if mode == 0 {
		mode = 0o644
	}
	fd, err := openInRoot(root, f.Path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW, uint64(mode))
	if err != nil {
		return fmt.Errorf("runckittest: copy %s in: %w", f.Path, err)
	}
	file := os.NewFile(uintptr(fd), f.Path)
	defer file.Close()
	if _, err := file.Write(f.Data); err != nil {
		return fmt.Errorf("runckittest: copy %s in: %w", f.Path, err)
	}
	if err := file.Chown(f.UID, f.GID); err != nil {
		return fmt.Errorf("runckittest: copy %s in: %w", f.Path, err)
	}
	return file.Chmod(mode | f.Mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
}

// ReadFile reads a file of the container. While init runs it is read as
// the container sees it (through /proc/PID/root, so files in the spec's
// mounts too); after, from the container's root filesystem.
func (c *Container) ReadFile(name string) ([]byte, error) {
	dir := filepath.Join(c.bundle, "rootfs")
	if pid := c.Init().Pid(); pid > 0 && c.Init().Status() == runckit.StatusRunning {
		dir = "/proc/" + strconv.Itoa(pid) + "/root"
	}
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("runckittest: read %s: %w", name, err)
	}
	defer unix.Close(root)
	fd, err := openInRoot(root, name, unix.O_RDONLY, 0)
	if err != nil {
		kind := err
		if errors.Is(err, unix.ENOENT) {
			kind = fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("runckittest: read %s in container %s: %w", name, c.ID(), kind)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(f)
}

// logBuffer collects output and wakes waiters on every write.
type logBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{notify: make(chan struct{})} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.notify)
	b.notify = make(chan struct{})
	return len(p), nil
}

// snapshot returns the output so far and a channel closed on the next
// write.
func (b *logBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.notify
}

func (b *logBuffer) String() string { s, _ := b.snapshot(); return s }
