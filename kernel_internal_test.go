package runckit

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// setKernelProbe makes checkKernel run probe until the test ends.
func setKernelProbe(t *testing.T, probe func() error) {
	kernel.mu.Lock()
	kernel.ok, kernel.probe = false, probe
	kernel.mu.Unlock()
	t.Cleanup(func() {
		kernel.mu.Lock()
		kernel.ok, kernel.probe = false, nil
		kernel.mu.Unlock()
	})
}

type noWatcher struct{}

func (noWatcher) Watch(int, func(ExitStatus)) error { return nil }

// On a kernel without the pidfd calls, NewContainer fails with
// ErrNotImplemented naming the minimum kernel, before the runtime runs and
// whatever the exit watcher; so does NewExitWatcher. The kernels are faked:
// the probe's system calls answer as Linux 5.2 and 5.3 do.
func TestOldKernelRefusedBeforeRuntimeRuns(t *testing.T) {
	for name, probe := range map[string]func() error{
		"5.2 (no pidfd_open)": func() error {
			return probePidfd(func(int, int) (int, error) { return -1, unix.ENOSYS }, waitidPidfdNoHang)
		},
		"5.3 (no waitid P_PIDFD)": func() error {
			return probePidfd(unix.PidfdOpen, func(int) error { return unix.EINVAL })
		},
	} {
		t.Run(name, func(t *testing.T) {
			setKernelProbe(t, probe)
			dir := t.TempDir()
			ran := filepath.Join(dir, "runtime-ran")
			runtime := filepath.Join(dir, "fake-runc")
			if err := os.WriteFile(runtime, []byte("#!/bin/sh\ntouch '"+ran+"'\nexit 1\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			bundle := filepath.Join(dir, "bundle")
			os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
			if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}`), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, opts := range [][]Option{
				{WithRuntime(runtime), WithRuntimeRoot(filepath.Join(dir, "root"))},
				{WithRuntime(runtime), WithRuntimeRoot(filepath.Join(dir, "root")), WithExitWatcher(noWatcher{})},
			} {
				_, err := NewContainer(ctx, "kernel-old", bundle, opts...)
				if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "needs Linux "+MinimumKernel) {
					t.Errorf("NewContainer = %v, want ErrNotImplemented naming Linux %s", err, MinimumKernel)
				}
			}
			if _, err := os.Stat(ran); err == nil {
				t.Errorf("the runtime ran on a kernel runckit refuses")
			}
			if entries, _ := os.ReadDir(bundle); len(entries) != 2 {
				t.Errorf("bundle holds %d entries after refusals, want config.json and rootfs only", len(entries))
			}
			if _, err := NewExitWatcher(); !errdefs.IsNotImplemented(err) {
				t.Errorf("NewExitWatcher = %v, want ErrNotImplemented", err)
			}
		})
	}
}

// The probe passes on the kernel the tests run on (5.4 or later).
func TestKernelProbePassesHere(t *testing.T) {
	if err := probePidfd(unix.PidfdOpen, waitidPidfdNoHang); err != nil {
		t.Fatalf("probe on this kernel: %v", err)
	}
}
