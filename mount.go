package runckit

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// mountFlags maps mount(8) option names to the flags they set (clear=false)
// or clear (clear=true). Anything else is passed to the filesystem as data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro":          {false, unix.MS_RDONLY},
	"rw":          {true, unix.MS_RDONLY},
	"bind":        {false, unix.MS_BIND},
	"rbind":       {false, unix.MS_BIND | unix.MS_REC},
	"nosuid":      {false, unix.MS_NOSUID},
	"suid":        {true, unix.MS_NOSUID},
	"nodev":       {false, unix.MS_NODEV},
	"dev":         {true, unix.MS_NODEV},
	"noexec":      {false, unix.MS_NOEXEC},
	"exec":        {true, unix.MS_NOEXEC},
	"noatime":     {false, unix.MS_NOATIME},
	"relatime":    {false, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME},
	"sync":        {false, unix.MS_SYNCHRONOUS},
	"remount":     {false, unix.MS_REMOUNT},
}

func parseMountOptions(opts []string) (flags uintptr, data string) {
	var extra []string
	for _, o := range opts {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		extra = append(extra, o)
	}
	return flags, strings.Join(extra, ",")
}

// mountTarget resolves m.Target inside the bundle, refusing paths that
// escape it.
func mountTarget(bundle string, m Mount) (string, error) {
	rel := m.Target
	if rel == "" {
		rel = "rootfs"
	}
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("runckit: mount target %q must be relative to the bundle: %w", m.Target, errdefs.ErrInvalidArgument)
	}
	target := filepath.Join(bundle, rel)
	if target != bundle && !strings.HasPrefix(target, bundle+string(filepath.Separator)) {
		return "", fmt.Errorf("runckit: mount target %q escapes the bundle: %w", m.Target, errdefs.ErrInvalidArgument)
	}
	return target, nil
}

// mountRootfs performs m and returns the absolute target to unmount later.
// A read-only bind needs a second, remounting call, as mount(8) does.
func mountRootfs(bundle string, m Mount) (string, error) {
	target, err := mountTarget(bundle, m)
	if err != nil {
		return "", err
	}
	flags, data := parseMountOptions(m.Options)
	if err := unix.Mount(m.Source, target, m.Type, flags, data); err != nil {
		return "", fmt.Errorf("runckit: mount %s (%s) on %s: %w", m.Source, m.Type, target, mountErrKind(err))
	}
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		if err := unix.Mount("", target, "", flags|unix.MS_REMOUNT, ""); err != nil {
			unmount(target)
			return "", fmt.Errorf("runckit: remount %s read-only: %w", target, mountErrKind(err))
		}
	}
	return target, nil
}

func mountErrKind(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%v: %w", err, errdefs.ErrPermissionDenied)
	}
	return err
}

// unmount removes the mount at target, detaching it if it is busy.
func unmount(target string) error {
	err := unix.Unmount(target, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	if errors.Is(err, unix.EINVAL) { // not a mount point (any more)
		return nil
	}
	return err
}
