package runckitshim_test

// Helpers for the tests that run the shim under a real containerd: a
// containerd v2.4.2 of the test's own (config, root, state and socket in a
// temp dir), the shim built from ./cmd/containerd-shim-runckit-v1 and put on
// containerd's PATH, and a busybox image built from /bin/busybox and
// imported offline.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/runckit/runckit/runckittest"
)

const (
	runtimeName = "io.containerd.runckit.v1"
	// containerdVersion is the containerd the tests are written against;
	// it is installed with go install when none is found.
	containerdVersion = "v2.4.2"
	busyboxRef        = "docker.io/runckit/busybox:test"
)

var (
	shimOnce sync.Once
	shimDir  string
	shimErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	runckittest.Cleanup() // the rootfs of the service-level tests
	if shimDir != "" {
		os.RemoveAll(shimDir)
	}
	os.Exit(code)
}

// requireRoot skips a test that needs root to run containers.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers under containerd needs root")
	}
}

// buildShim builds containerd-shim-runckit-v1 once per test binary into a
// temp dir and returns that dir.
func buildShim(t *testing.T) string {
	t.Helper()
	shimOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rkshim-bin")
		if err != nil {
			shimErr = err
			return
		}
		shimDir = dir
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "containerd-shim-runckit-v1"), "./cmd/containerd-shim-runckit-v1")
		// Static, as containerd builds its shims and the README says.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			shimErr = fmt.Errorf("go build the shim: %v\n%s", err, out)
		}
	})
	if shimErr != nil {
		t.Fatal(shimErr)
	}
	return shimDir
}

// findBinary looks for name in /root/go/bin, $(go env GOPATH)/bin and PATH,
// and installs pkg@version with go install when it is in none of them.
func findBinary(t *testing.T, name, pkg string, env ...string) string {
	t.Helper()
	p, err := findOrInstall(t, name, pkg, env...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func findOrInstall(t *testing.T, name, pkg string, env ...string) (string, error) {
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	gobin := filepath.Join(strings.TrimSpace(string(gopath)), "bin")
	for _, p := range []string{filepath.Join("/root/go/bin", name), filepath.Join(gobin, name)} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	t.Logf("%s not found: go install %s", name, pkg)
	cmd := exec.Command("go", "install", pkg)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", pkg, err, out)
	}
	return filepath.Join(gobin, name), nil
}

// daemon is a containerd started by a test.
type daemon struct {
	t       *testing.T
	dir     string
	config  string
	sock    string
	ns      string
	binary  string
	shimDir string
	cmd     *exec.Cmd
	done    chan struct{}
	log     *os.File
	client  *containerd.Client
}

// startContainerd starts a containerd of the test's own whose config is the
// common part plus extra (TOML, appended), in namespace ns. With cri false
// the CRI plugins are disabled. Cleanup deletes every task left in ns and
// stops containerd.
func startContainerd(t *testing.T, ns string, cri bool, extra string) *daemon {
	t.Helper()
	requireRoot(t)
	d := &daemon{
		t:       t,
		ns:      ns,
		shimDir: buildShim(t),
		binary:  findBinary(t, "containerd", "github.com/containerd/containerd/v2/cmd/containerd@"+containerdVersion, "GOFLAGS=-tags=no_btrfs"),
	}
	// A short dir: containerd's sockets must fit a sockaddr_un.
	dir, err := os.MkdirTemp("", "rkc8d")
	if err != nil {
		t.Fatal(err)
	}
	d.dir = dir
	d.sock = filepath.Join(dir, "c.sock")
	disabled := `"io.containerd.nri.v1.nri"`
	if !cri {
		disabled += `, "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"`
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled, d.sock, d.sock+".ttrpc") + extra
	d.config = filepath.Join(dir, "config.toml")
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if d.log, err = os.Create(filepath.Join(dir, "containerd.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cleanup()
		if t.Failed() {
			d.dumpLog()
		}
		d.log.Close()
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	d.start()
	return d
}

// start runs containerd and connects a client to it.
func (d *daemon) start() {
	t := d.t
	t.Helper()
	cmd := exec.Command(d.binary, "--config", d.config)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	cmd.Env = append(os.Environ(), "PATH="+d.shimDir+":"+os.Getenv("PATH")+":/usr/sbin:/usr/bin:/sbin:/bin")
	// Its own process group: a test's signal must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	d.cmd = cmd
	d.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := containerd.New(d.sock, containerd.WithDefaultNamespace(d.ns), containerd.WithTimeout(time.Second))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			serving, err2 := c.IsServing(ctx)
			cancel()
			if err2 == nil && serving {
				d.client = c
				return
			}
			c.Close()
			err = err2
		}
		select {
		case <-d.done:
			d.dumpLog()
			t.Fatalf("containerd exited while starting: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			d.dumpLog()
			t.Fatalf("containerd did not serve within 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop stops containerd (SIGTERM) and waits for it. Shims keep running.
func (d *daemon) stop() {
	if d.client != nil {
		d.client.Close()
		d.client = nil
	}
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
}

// restart stops containerd and starts it again on the same root and state.
func (d *daemon) restart() {
	d.stop()
	d.start()
}

// cleanup kills and deletes every task and container left in the test's
// namespace, then stops containerd.
func (d *daemon) cleanup() {
	if d.client != nil {
		ctx, cancel := context.WithTimeout(d.ctx(), time.Minute)
		defer cancel()
		cs, _ := d.client.Containers(ctx)
		for _, c := range cs {
			if task, err := c.Task(ctx, nil); err == nil {
				_ = task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll)
				if st, err := task.Wait(ctx); err == nil {
					select {
					case <-st:
					case <-time.After(10 * time.Second):
					}
				}
				if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
					d.t.Logf("cleanup: delete task %s: %v", c.ID(), err)
				}
			}
			if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
				d.t.Logf("cleanup: delete container %s: %v", c.ID(), err)
			}
		}
	}
	d.stop()
	// runc's state dir of the test's own namespace (never a shared one);
	// Remove fails, as it should, if anything is left in it.
	if d.ns != "k8s.io" {
		if err := os.Remove(filepath.Join("/run/containerd/runc", d.ns)); err != nil && !os.IsNotExist(err) {
			d.t.Errorf("runc state left behind: %v", err)
		}
	}
}

func (d *daemon) dumpLog() {
	data, err := os.ReadFile(d.log.Name())
	if err != nil {
		return
	}
	if len(data) > 64<<10 {
		data = data[len(data)-64<<10:]
	}
	d.t.Logf("containerd log (tail):\n%s", data)
}

// ctx is a background context in the daemon's namespace.
func (d *daemon) ctx() context.Context {
	return namespaces.WithNamespace(context.Background(), d.ns)
}

// testCtx is the daemon's context with a deadline.
func (d *daemon) testCtx(timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(d.ctx(), timeout)
	d.t.Cleanup(cancel)
	return ctx
}

// importImage builds an image of /bin/busybox with every applet linked in
// /bin, whose entrypoint is entrypoint, imports it as ref and unpacks it.
func (d *daemon) importImage(ctx context.Context, ref string, entrypoint ...string) containerd.Image {
	t := d.t
	t.Helper()
	archive, err := busyboxArchive(ref, entrypoint)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := d.client.Import(ctx, bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("import %s: %v", ref, err)
	}
	if len(imgs) != 1 || imgs[0].Name != ref {
		t.Fatalf("import gave %v; want one image %s", imgs, ref)
	}
	img := containerd.NewImage(d.client, imgs[0])
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatalf("unpack %s: %v", ref, err)
	}
	return img
}

var (
	appletsOnce sync.Once
	applets     []string
	appletsErr  error
)

// busyboxArchive returns an OCI image layout tarball of one image named ref.
func busyboxArchive(ref string, entrypoint []string) ([]byte, error) {
	appletsOnce.Do(func() {
		out, err := exec.Command("/bin/busybox", "--list").Output()
		if err != nil {
			appletsErr = fmt.Errorf("busybox --list (install busybox-static): %w", err)
			return
		}
		applets = strings.Fields(string(out))
	})
	if appletsErr != nil {
		return nil, appletsErr
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, err
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	for _, dir := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "root"} {
		mode := int64(0o755)
		if dir == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	files := map[string][]byte{
		"bin/busybox": bb,
		"etc/passwd":  []byte("root:x:0:0:root:/root:/bin/sh\n"),
		"etc/group":   []byte("root:x:0:\n"),
	}
	for _, name := range []string{"bin/busybox", "etc/passwd", "etc/group"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(files[name])), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[name]); err != nil {
			return nil, err
		}
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}

	blobs := map[string][]byte{}
	add := func(data []byte) (string, int) {
		dgst := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
		blobs[dgst] = data
		return dgst, len(data)
	}
	layerDigest, layerSize := add(layer.Bytes())
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/bin"},
			"Entrypoint": entrypoint,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return nil, err
	}
	configDigest, configSize := add(config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	})
	if err != nil {
		return nil, err
	}
	manifestDigest, manifestSize := add(manifest)
	tag := ref[strings.LastIndex(ref, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    manifestDigest,
			"size":      manifestSize,
			"platform":  map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": tag,
			},
		}},
	})
	if err != nil {
		return nil, err
	}

	var out bytes.Buffer
	aw := tar.NewWriter(&out)
	put := func(name string, data []byte) error {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := aw.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := put("index.json", index); err != nil {
		return nil, err
	}
	for dgst, data := range blobs {
		if err := put("blobs/sha256/"+strings.TrimPrefix(dgst, "sha256:"), data); err != nil {
			return nil, err
		}
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// parentPid reads a process's parent from /proc.
func parentPid(pid uint32) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	var state string
	var ppid int
	if _, err := fmt.Sscan(s[i+1:], &state, &ppid); err != nil {
		return 0, err
	}
	return ppid, nil
}

// cgroupDir is the directory of pid's cgroup for a v1 controller, or its
// unified cgroup when the controller is not mounted as v1.
func cgroupDir(pid uint32, controller string) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	unified := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				mnt := filepath.Join("/sys/fs/cgroup", parts[1])
				if _, err := os.Stat(mnt); err != nil {
					mnt = filepath.Join("/sys/fs/cgroup", controller)
				}
				return filepath.Join(mnt, parts[2]), nil
			}
		}
	}
	if unified != "" {
		if _, err := os.Stat("/sys/fs/cgroup/unified"); err == nil {
			return filepath.Join("/sys/fs/cgroup/unified", unified), nil
		}
		return filepath.Join("/sys/fs/cgroup", unified), nil
	}
	return "", fmt.Errorf("no %s cgroup for pid %d", controller, pid)
}

// readTrim reads a small file and trims the newline.
func readTrim(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// countWriter counts the bytes written to it and checks they are all want.
type countWriter struct {
	mu    sync.Mutex
	n     int64
	other int64
	want  byte
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n += int64(len(p))
	for _, b := range p {
		if b != w.want {
			w.other++
		}
	}
	return len(p), nil
}

func (w *countWriter) counts() (int64, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n, w.other
}

var _ io.Writer = (*countWriter)(nil)
