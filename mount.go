package runckit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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

// Rootfs mounts are made with the kernel's mount API (fsopen/fsmount, or
// open_tree for binds, then move_mount), never by path:
//
//   - The target is opened inside the bundle with openat2, beneath the
//     bundle and through no symlink, and the new mount is attached to that
//     open directory. A symlink anywhere in the target (placed in the bundle
//     beforehand, or by a container with a writable rootfs) is refused, so a
//     mount can never land outside the bundle.
//   - The fd that fsmount or open_tree returns is the mount itself, and it
//     stays open until Delete. Unmounting goes through that fd
//     (/proc/self/fd/N names exactly that mount, wherever it has been moved
//     or renamed), so Delete removes what it mounted and never whatever the
//     path names by then.
//
// The API is in every kernel since 5.12 (mount_setattr); openat2 since 5.6.

// rootfsMount is one mount made by mountRootfs.
type rootfsMount struct {
	target string // where it was mounted, for the record and messages
	fd     int    // O_PATH fd of the mount's root; -1 once unmounted
	id     uint64 // its mount ID as /proc/self/mountinfo shows it
}

// mountRootfs performs m on its target inside the bundle.
func mountRootfs(bundle string, m Mount) (*rootfsMount, error) {
	target, err := mountTarget(bundle, m)
	if err != nil {
		return nil, err
	}
	flags, data := parseMountOptions(m.Options)
	if flags&unix.MS_REMOUNT != 0 {
		// A remount changes a mount runckit did not make, which Delete
		// would then unmount.
		return nil, fmt.Errorf("runckit: mount on %s: option \"remount\" is not supported for rootfs mounts: %w", target, errdefs.ErrInvalidArgument)
	}
	tfd, err := openBeneath(bundle, target)
	if err != nil {
		return nil, err
	}
	defer unix.Close(tfd)
	mfd, err := newDetachedMount(m, flags, data)
	if err != nil {
		return nil, fmt.Errorf("runckit: mount %s (%s) on %s: %w", m.Source, m.Type, target, err)
	}
	if err := unix.MoveMount(mfd, "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		unix.Close(mfd) // a mount never attached goes with its fd
		return nil, fmt.Errorf("runckit: mount %s (%s) on %s: %w", m.Source, m.Type, target, mountErrKind(err))
	}
	rm := &rootfsMount{target: target, fd: mfd}
	var stx unix.Statx_t
	if err := unix.Statx(mfd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil || stx.Mask&unix.STATX_MNT_ID == 0 {
		rm.unmount()
		return nil, fmt.Errorf("runckit: mount on %s: read its mount ID: %v", target, err)
	}
	rm.id = stx.Mnt_id
	return rm, nil
}

// openBeneath opens target, an absolute path inside bundle, as an O_PATH
// fd, resolving it within the bundle and refusing symlinks.
func openBeneath(bundle, target string) (int, error) {
	rel, err := filepath.Rel(bundle, target)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, fmt.Errorf("runckit: mount target %s is outside the bundle %s: %w", target, bundle, errdefs.ErrInvalidArgument)
	}
	// The bundle path is the caller's and may go through symlinks; only what
	// lies below it must not.
	dfd, err := unix.Open(bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("runckit: open bundle %s: %w", bundle, mountErrKind(err))
	}
	defer unix.Close(dfd)
	for {
		fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue // a concurrent rename elsewhere; the kernel asks to retry
		case errors.Is(err, unix.ELOOP):
			return -1, fmt.Errorf("runckit: mount target %s goes through a symlink (refused: it could lead outside the bundle): %w", target, errdefs.ErrInvalidArgument)
		case errors.Is(err, unix.EXDEV):
			return -1, fmt.Errorf("runckit: mount target %s escapes the bundle: %w", target, errdefs.ErrInvalidArgument)
		}
		return -1, fmt.Errorf("runckit: mount target %s: %w", target, mountErrKind(err))
	}
}

// mountAttrs maps the per-mount flags to mount_setattr/fsmount attributes.
var mountAttrs = []struct {
	flag uintptr
	attr uint64
}{
	{unix.MS_RDONLY, unix.MOUNT_ATTR_RDONLY},
	{unix.MS_NOSUID, unix.MOUNT_ATTR_NOSUID},
	{unix.MS_NODEV, unix.MOUNT_ATTR_NODEV},
	{unix.MS_NOEXEC, unix.MOUNT_ATTR_NOEXEC},
}

// attrsOf returns the mount attributes flags asks for, and the atime mode
// if one was given.
func attrsOf(flags uintptr) (attr uint64, atime uint64, setAtime bool) {
	for _, a := range mountAttrs {
		if flags&a.flag != 0 {
			attr |= a.attr
		}
	}
	switch {
	case flags&unix.MS_NOATIME != 0:
		return attr, unix.MOUNT_ATTR_NOATIME, true
	case flags&unix.MS_STRICTATIME != 0:
		return attr, unix.MOUNT_ATTR_STRICTATIME, true
	case flags&unix.MS_RELATIME != 0:
		return attr, unix.MOUNT_ATTR_RELATIME, true
	}
	return attr, 0, false
}

// newDetachedMount makes the mount m describes, not yet attached anywhere,
// and returns its fd. A bind clones the source tree and then applies the
// flags to the clone (recursively for rbind), so "bind,ro" is read-only
// from the start. Any other type is a new filesystem instance; data
// options ("size=1m", "mode=755", "lowerdir=...") are passed one by one as
// the filesystem's parameters.
func newDetachedMount(m Mount, flags uintptr, data string) (int, error) {
	attr, atime, setAtime := attrsOf(flags)
	if setAtime {
		attr |= atime
	}
	if flags&unix.MS_BIND != 0 {
		treeFlags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
		setFlags := uint(unix.AT_EMPTY_PATH)
		if flags&unix.MS_REC != 0 {
			treeFlags |= unix.AT_RECURSIVE
			setFlags |= unix.AT_RECURSIVE
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source, treeFlags)
		if err != nil {
			return -1, mountErrKind(err)
		}
		if attr != 0 {
			ma := &unix.MountAttr{Attr_set: attr}
			if setAtime {
				ma.Attr_clr = unix.MOUNT_ATTR__ATIME
			}
			if err := unix.MountSetattr(fd, "", setFlags, ma); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("set mount flags: %w", mountErrKind(err))
			}
		}
		return fd, nil
	}
	fsfd, err := unix.Fsopen(m.Type, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, mountErrKind(err)
	}
	defer unix.Close(fsfd)
	set := func(what string, err error) error {
		if err == nil {
			return nil
		}
		return fmt.Errorf("%s: %w%s", what, mountErrKind(err), fsLog(fsfd))
	}
	if m.Source != "" {
		if err := set("source "+m.Source, unix.FsconfigSetString(fsfd, "source", m.Source)); err != nil {
			return -1, err
		}
	}
	// Superblock flags: a read-only or synchronous filesystem, as mount(2)
	// makes for MS_RDONLY and MS_SYNCHRONOUS.
	if flags&unix.MS_RDONLY != 0 {
		if err := set("option ro", unix.FsconfigSetFlag(fsfd, "ro")); err != nil {
			return -1, err
		}
	}
	if flags&unix.MS_SYNCHRONOUS != 0 {
		if err := set("option sync", unix.FsconfigSetFlag(fsfd, "sync")); err != nil {
			return -1, err
		}
	}
	if data != "" {
		for _, opt := range strings.Split(data, ",") {
			var err error
			if k, v, ok := strings.Cut(opt, "="); ok && m.Type == "overlay" && k == "lowerdir" {
				err = setOverlayLowers(fsfd, v)
			} else if ok {
				err = unix.FsconfigSetString(fsfd, k, v)
			} else {
				err = unix.FsconfigSetFlag(fsfd, opt)
			}
			if err := set("option "+opt, err); err != nil {
				return -1, err
			}
		}
	}
	if err := set("create", unix.FsconfigCreate(fsfd)); err != nil {
		return -1, err
	}
	fd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, int(attr))
	if err != nil {
		return -1, set("fsmount", err)
	}
	return fd, nil
}

// setOverlayLowers gives overlayfs its lower layers one by one, with
// "lowerdir+" (and "datadir+" for the data-only layers after "::"):
// fsconfig takes at most 256 bytes per string, and an image of many layers
// has a lowerdir far longer (longer than the page mount(2) takes, even).
// A kernel without "lowerdir+" (before 6.8) gets the one string.
func setOverlayLowers(fsfd int, lowerdir string) error {
	lowers, data, _ := strings.Cut(lowerdir, "::")
	for i, dir := range splitOverlayLayers(lowers) {
		if err := unix.FsconfigSetString(fsfd, "lowerdir+", dir); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) && data == "" {
				return unix.FsconfigSetString(fsfd, "lowerdir", lowerdir)
			}
			return err
		}
	}
	for _, dir := range splitOverlayLayers(data) {
		if err := unix.FsconfigSetString(fsfd, "datadir+", dir); err != nil {
			return err
		}
	}
	return nil
}

// splitOverlayLayers splits a lowerdir list at its unescaped colons and
// unescapes each path ("\:" is a colon in a path, as overlayfs reads it).
func splitOverlayLayers(list string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(list); i++ {
		switch {
		case list[i] == '\\' && i+1 < len(list):
			i++
			cur.WriteByte(list[i])
		case list[i] == ':':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(list[i])
		}
	}
	if cur.Len() > 0 || len(out) > 0 {
		out = append(out, cur.String())
	}
	return out
}

// fsLog returns the messages the filesystem left on its configuration fd
// ("tmpfs: Unknown parameter 'x'"), for the error.
func fsLog(fsfd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(strings.TrimPrefix(string(buf[:n]), "e ")))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (" + strings.Join(msgs, "; ") + ")"
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

// unmount removes the mount, through its own fd, so that a rename or a
// symlink put in its path since can not redirect it. It checks first that
// the mount is still attached and that nothing was mounted over its root:
// unmounting through the fd would otherwise take the mount on top. The
// detach is lazy (MNT_DETACH): the fd kept for this purpose makes a plain
// unmount fail with EBUSY, and a container process still using the
// filesystem keeps it alive anyway, as a busy unmount did before. Safe to
// call more than once.
func (rm *rootfsMount) unmount() error {
	if rm.fd < 0 {
		return nil
	}
	attached, covered, err := mountState(rm.id)
	if err != nil {
		return fmt.Errorf("runckit: unmount %s: %w", rm.target, err)
	}
	if covered {
		// Leave both: unmounting through the fd would take the other one.
		return fmt.Errorf("runckit: unmount %s: another mount covers it; left in place: %w", rm.target, errdefs.ErrFailedPrecondition)
	}
	if attached {
		err = unix.Unmount("/proc/self/fd/"+strconv.Itoa(rm.fd), unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) { // unmounted meanwhile
			err = nil
		}
	}
	unix.Close(rm.fd)
	rm.fd = -1
	if err != nil {
		return fmt.Errorf("runckit: unmount %s: %w", rm.target, err)
	}
	return nil
}

// mountState reads /proc/self/mountinfo for mount id: whether it is still
// attached, and whether another mount sits on its root. The fd runckit
// holds keeps the mount alive, so its ID can not be reused meanwhile.
func mountState(id uint64) (attached, covered bool, err error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, false, err
	}
	ids := strconv.FormatUint(id, 10)
	var mountpoint string
	var childPoints []string // mount points of the mounts whose parent is id
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line) // ID, parent ID, dev, root, mount point, ...
		if len(f) < 5 {
			continue
		}
		if f[0] == ids {
			attached, mountpoint = true, f[4]
		}
		if f[1] == ids {
			childPoints = append(childPoints, f[4])
		}
	}
	for _, p := range childPoints {
		if attached && p == mountpoint {
			covered = true
		}
	}
	return attached, covered, nil
}

// unmountRecorded unmounts a rootfs mount that an earlier run of the
// program made, as its record names it. The fd of that run is gone, so the
// target is resolved again, inside the bundle and through no symlink, and
// unmounted only if a mount's root is there.
func unmountRecorded(bundle, target string) error {
	fd, err := openBeneath(bundle, target)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, 0, &stx); err != nil {
		return fmt.Errorf("runckit: unmount %s: %w", target, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return nil // not a mount any more
	}
	err = unix.Unmount("/proc/self/fd/"+strconv.Itoa(fd), unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("runckit: unmount %s: %w", target, err)
	}
	return nil
}
