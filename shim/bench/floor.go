package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// floorSide is the raw runc floor: the same runc binary driven through
// go-runc with neither containerd nor a shim in the path, on containers
// with the spec containerd generates (its default spec, same namespaces and
// cgroup path shape) over a plain directory holding the image's files.
// The bench process is a child subreaper, so a container's init becomes
// its child when `runc create` exits and wait4 on it is the exact wait.
type floorSide struct {
	dir    string // bundles, runc root and rootfs live here
	rootfs string
	runc   *runc.Runc

	mu   sync.Mutex
	live map[string]int // container ID -> unreaped init pid, 0 when none

	burstID string
	burstP  specs.Process
}

func newFloor(ctx context.Context, dir, runcPath, busybox string) (*floorSide, error) {
	f := &floorSide{
		dir:    dir,
		rootfs: filepath.Join(dir, "rootfs"),
		runc:   &runc.Runc{Command: runcPath, Root: filepath.Join(dir, "runc")},
		live:   map[string]int{},
	}
	if err := os.MkdirAll(f.runc.Root, 0o700); err != nil {
		return nil, err
	}
	if err := writeRootfs(busybox, f.rootfs); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *floorSide) bundle(id string) string { return filepath.Join(f.dir, "bundles", id) }

// writeBundle writes id's config.json: containerd's default spec for id in
// the context's namespace, rooted at the shared rootfs.
func (f *floorSide) writeBundle(ctx context.Context, id string, args ...string) error {
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: id},
		oci.WithProcessArgs(args...), oci.WithEnv([]string{"PATH=/bin"}), oci.WithRootFSPath(f.rootfs))
	if err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.bundle(id), 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(f.bundle(id), "config.json"), data, 0o600)
}

// create runs `runc create` for id (stdio on /dev/null, a pid file, as a
// shim does) and returns init's pid.
func (f *floorSide) create(ctx context.Context, id string) (int, error) {
	nio, err := runc.NewNullIO()
	if err != nil {
		return 0, err
	}
	defer nio.Close()
	pidFile := filepath.Join(f.bundle(id), "init.pid")
	f.mu.Lock()
	f.live[id] = 0 // tracked from now on: a failed create may leave state
	f.mu.Unlock()
	if err := f.runc.Create(ctx, id, f.bundle(id), &runc.CreateOpts{IO: nio, PidFile: pidFile}); err != nil {
		return 0, fmt.Errorf("runc create %s: %w", id, err)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", pidFile, err)
	}
	f.mu.Lock()
	f.live[id] = pid
	f.mu.Unlock()
	return pid, nil
}

// wait waits for init of id with wait4 (it is the bench's child).
func (f *floorSide) wait(id string, pid int) error {
	if err := waitPid(pid, 0); err != nil {
		return err
	}
	f.mu.Lock()
	if _, ok := f.live[id]; ok {
		f.live[id] = 0
	}
	f.mu.Unlock()
	return nil
}

// delete runs `runc delete` and collects init if it was not waited for.
func (f *floorSide) delete(ctx context.Context, id string, force bool) error {
	if err := f.runc.Delete(ctx, id, &runc.DeleteOpts{Force: force}); err != nil {
		if _, serr := os.Stat(filepath.Join(f.runc.Root, id)); serr == nil {
			return fmt.Errorf("runc delete %s: %w", id, err)
		}
	}
	f.mu.Lock()
	pid := f.live[id]
	delete(f.live, id)
	f.mu.Unlock()
	if pid > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := waitPid(pid, unix.WNOHANG)
			if !errors.Is(err, errNotExited) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	os.RemoveAll(f.bundle(id))
	return nil
}

func (f *floorSide) isFloorPid(pid int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.live {
		if p == pid {
			return true
		}
	}
	return false
}

func (f *floorSide) setupBurst(ctx context.Context) error {
	id := "burst-floor"
	if err := f.writeBundle(ctx, id, "sleep", "100000"); err != nil {
		return err
	}
	if _, err := f.create(ctx, id); err != nil {
		return err
	}
	if err := f.runc.Start(ctx, id); err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(f.bundle(id), "config.json"))
	if err != nil {
		return err
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	f.burstID, f.burstP = id, *spec.Process
	f.burstP.Args = []string{"true"}
	return nil
}

func (f *floorSide) teardownBurst(ctx context.Context) error {
	if f.burstID == "" {
		return nil
	}
	err := f.delete(ctx, f.burstID, true)
	f.burstID = ""
	return err
}

// burst: per exec, go-runc's Exec in the foreground (runc exec without
// --detach), which returns when the process has exited.
func (f *floorSide) burst(ctx context.Context, round, n int) (time.Duration, error) {
	return gatedBurst(n, func(i int) error {
		return f.runc.Exec(ctx, f.burstID, f.burstP, &runc.ExecOpts{})
	})
}

// lifecycle: per container runc create, start, wait4 on init, delete. The
// bundle (config.json) is written inside the timing, as containerd writes
// one per container.
func (f *floorSide) lifecycle(ctx context.Context, round, n, width int) (time.Duration, error) {
	t0 := time.Now()
	err := parallelDo(ctx, n, width, func(i int) error {
		id := fmt.Sprintf("lc%d-w%d-floor-%d", round, width, i)
		if err := f.writeBundle(ctx, id, "true"); err != nil {
			return err
		}
		pid, err := f.create(ctx, id)
		if err != nil {
			return err
		}
		if err := f.runc.Start(ctx, id); err != nil {
			return fmt.Errorf("runc start %s: %w", id, err)
		}
		if err := f.wait(id, pid); err != nil {
			return err
		}
		return f.delete(ctx, id, false)
	})
	return time.Since(t0), err
}

// close force-deletes whatever floor container is left.
func (f *floorSide) close(ctx context.Context) error {
	f.mu.Lock()
	var ids []string
	for id := range f.live {
		ids = append(ids, id)
	}
	f.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := f.delete(ctx, id, true); err != nil {
			errs = append(errs, err)
		}
	}
	ents, _ := os.ReadDir(f.runc.Root)
	for _, e := range ents {
		errs = append(errs, fmt.Errorf("runc state left in %s: %s", f.runc.Root, e.Name()))
		_ = f.runc.Delete(ctx, e.Name(), &runc.DeleteOpts{Force: true})
	}
	return errors.Join(errs...)
}

var errNotExited = errors.New("not exited")

func waitPid(pid, flags int) error {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, flags, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait4(%d): %w", pid, err)
		}
		if got == 0 {
			return errNotExited
		}
		return nil
	}
}

// reapShims collects the shim processes that the bench, a subreaper,
// inherits when their `shim start` parent exits. Only zombies named
// containerd-shim* are taken: the floor's inits and go-runc's own runc
// children are waited for by pid elsewhere.
func reapShims(ctx context.Context, f *floorSide) {
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-tick.C:
		}
		for _, pid := range zombieChildren() {
			if f != nil && f.isFloorPid(pid) {
				continue
			}
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// zombieChildren lists the bench's zombie children whose name starts with
// containerd-shim.
func zombieChildren() []int {
	var out []int
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		for _, s := range strings.Fields(string(data)) {
			stat, err := os.ReadFile("/proc/" + s + "/stat")
			if err != nil {
				continue
			}
			st := string(stat)
			open, close := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
			if open < 0 || close < open || len(st) < close+3 {
				continue
			}
			if st[close+2] == 'Z' && strings.HasPrefix(st[open+1:close], "containerd-shim") {
				pid, _ := strconv.Atoi(s)
				out = append(out, pid)
			}
		}
	}
	return out
}
