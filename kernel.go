package runckit

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// MinimumKernel is the oldest Linux runckit runs on: it watches, reaps and
// signals every container process through a pidfd, with pidfd_send_signal
// (5.1), pidfd_open and epoll on a pidfd (5.3) and waitid(P_PIDFD) (5.4).
// On an older kernel NewContainer, Restore, LoadContainer and the exit
// watcher constructors fail with an error wrapping errdefs.ErrNotImplemented
// that names the kernel, before anything runs.
const MinimumKernel = "5.4"

// kernel holds the result of the pidfd probe once it has succeeded; a
// failure is probed again next time (it may be a passing EMFILE).
var kernel struct {
	mu    sync.Mutex
	ok    bool
	probe func() error // probePidfd with the real system calls; tests replace it
}

// checkKernel reports whether this kernel has the pidfd system calls
// runckit needs.
func checkKernel() error {
	kernel.mu.Lock()
	defer kernel.mu.Unlock()
	if kernel.ok {
		return nil
	}
	probe := kernel.probe
	if probe == nil {
		probe = func() error { return probePidfd(unix.PidfdOpen, waitidPidfdNoHang) }
	}
	if err := probe(); err != nil {
		return err
	}
	kernel.ok = true
	return nil
}

// waitidPidfdNoHang is waitid(P_PIDFD, fd, WEXITED|WNOHANG).
func waitidPidfdNoHang(fd int) error {
	var info unix.Siginfo
	return unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil)
}

// probePidfd opens a pidfd on this process and waits on it: ENOSYS from
// pidfd_open means Linux before 5.3; EINVAL from waitid, which does not
// know P_PIDFD, means 5.3. On 5.4 and later waitid says ECHILD, as this
// process is not its own child.
func probePidfd(pidfdOpen func(pid, flags int) (int, error), waitid func(fd int) error) error {
	fd, err := pidfdOpen(os.Getpid(), 0)
	if errors.Is(err, unix.ENOSYS) {
		return oldKernel("pidfd_open", err)
	}
	if err != nil {
		return fmt.Errorf("runckit: pidfd_open of this process: %w", err)
	}
	defer unix.Close(fd)
	if err := waitid(fd); errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return oldKernel("waitid(P_PIDFD)", err)
	}
	return nil
}

func oldKernel(call string, err error) error {
	var uts unix.Utsname
	release := "unknown"
	if unix.Uname(&uts) == nil {
		release = strings.TrimRight(string(uts.Release[:]), "\x00")
	}
	return fmt.Errorf("runckit: Linux %s has no %s (%v): runckit needs Linux %s or later: %w",
		release, call, err, MinimumKernel, errdefs.ErrNotImplemented)
}
