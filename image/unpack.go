package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Whiteout names of the OCI image layer format: ".wh.NAME" deletes NAME of
// the layers below, ".wh..wh..opq" empties its directory of them.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// unpacker applies layers, lowest first, onto one directory. Every path
// is resolved inside that directory by the kernel (openat2 with
// RESOLVE_IN_ROOT), so a symlink of the image, absolute or relative, is
// followed as the container would follow it and never leads outside; a
// name that climbs out with ".." is refused.
type unpacker struct {
	root int // O_PATH fd of the directory being filled
	// created holds what the layer being applied made, which its own
	// opaque markers must not remove.
	created map[string]bool
}

func newUnpacker(dir string) (*unpacker, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &unpacker{root: fd}, nil
}

func (u *unpacker) close() { unix.Close(u.root) }

// badLayer is the error for a layer whose content is not acceptable.
func badLayer(name, why string) error {
	return fmt.Errorf("layer entry %q: %s: %w", name, why, errdefs.ErrInvalidArgument)
}

// cleanName makes a tar entry name relative to the root, refusing one that
// climbs out of it.
func cleanName(name string) (string, error) {
	clean := path.Clean("./" + strings.TrimLeft(name, "/"))
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", badLayer(name, "path escapes the root")
	}
	return clean, nil
}

// apply applies one layer, an uncompressed tar stream.
func (u *unpacker) apply(r io.Reader) error {
	u.created = make(map[string]bool)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %v: %w", err, errdefs.ErrDataLoss)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // the root itself keeps the mode it was made with
	}
	dir, base := path.Split(name)
	dir = path.Clean("./" + dir)
	parent, err := u.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(parent)

	switch {
	case base == opaqueMarker:
		return u.emptyDir(parent, dir)
	case strings.HasPrefix(base, whiteoutPrefix):
		target := base[len(whiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			return badLayer(hdr.Name, "whiteout names nothing")
		}
		if err := removeAllAt(parent, target); err != nil {
			return fmt.Errorf("whiteout %s: %w", hdr.Name, err)
		}
		return nil
	}

	// Whatever a lower layer had at this name goes, unless both are
	// directories, which merge.
	var st unix.Stat_t
	if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if !(hdr.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR) {
			if err := removeAllAt(parent, base); err != nil {
				return fmt.Errorf("replace %s: %w", name, err)
			}
		}
	}
	u.created[name] = true

	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(parent, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s: %w", name, err)
		}
	case tar.TypeReg, tar.TypeRegA:
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %v: %w", name, err, errdefs.ErrDataLoss)
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("symlink %s: %w", name, err)
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return badLayer(hdr.Name, fmt.Sprintf("hard link target %q escapes the root", hdr.Linkname))
		}
		tfd, err := u.open(target, unix.O_PATH|unix.O_NOFOLLOW)
		if err != nil {
			return badLayer(hdr.Name, fmt.Sprintf("hard link target %q: %v", hdr.Linkname, err))
		}
		err = unix.Linkat(tfd, "", parent, base, unix.AT_EMPTY_PATH)
		unix.Close(tfd)
		if err != nil {
			return fmt.Errorf("link %s to %s: %w", name, target, err)
		}
		return nil // a hard link shares its target's metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(parent, base, kind|0o600, int(dev)); err != nil {
			return fmt.Errorf("mknod %s: %w", name, err)
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return badLayer(hdr.Name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
	}

	// Ownership first: chown clears the setuid and setgid bits, which the
	// chmod after it sets.
	if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %s: %w", name, err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(parent, base, mode, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	// The entry is named through its parent's fd, so the path can not be
	// redirected; lsetxattr does not follow the last component.
	at := "/proc/self/fd/" + strconv.Itoa(parent) + "/" + base
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := unix.Lsetxattr(at, attr, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s on %s: %w", attr, name, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	return nil
}

// open opens name inside the root.
func (u *unpacker) open(name string, flags uint64) (int, error) {
	return unix.Openat2(u.root, name, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// mkdirAll opens directory dir inside the root, making what is missing,
// and returns an O_PATH fd of it.
func (u *unpacker) mkdirAll(dir string) (int, error) {
	fd, err := u.open(dir, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, badLayer(dir, fmt.Sprintf("parent is not a directory: %v", err))
		}
		return fd, nil
	}
	parent, err := u.mkdirAll(path.Dir(dir))
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	base := path.Base(dir)
	if err := unix.Mkdirat(parent, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %s: %w", dir, err)
	}
	fd, err = unix.Openat(parent, base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, badLayer(dir, fmt.Sprintf("parent is not a directory: %v", err))
	}
	return fd, nil
}

// emptyDir removes what lower layers left in dir (an opaque directory),
// keeping what this layer made there.
func (u *unpacker) emptyDir(dirfd int, dir string) error {
	names, err := readDirNames(dirfd)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	for _, n := range names {
		if u.created[path.Join(dir, n)] {
			continue
		}
		if err := removeAllAt(dirfd, n); err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
	}
	return nil
}

// readDirNames lists a directory given by an fd of any kind.
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAllAt removes name in dirfd and, for a directory, all it holds,
// never following a symlink.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(sub)
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(sub, n); err != nil {
				break
			}
		}
	}
	unix.Close(sub)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
