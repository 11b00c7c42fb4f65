package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// defaultPath is the PATH of a process whose image sets none.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec returns the OCI spec of a container of the image, for a bundle
// whose rootfs/ is the image's root (see Options): the process is the
// image's Entrypoint and Cmd (args, when given, replace Cmd), with its Env,
// WorkingDir and User, the user's name and groups resolved through the
// image's /etc/passwd and /etc/group (an unknown name is ErrNotFound); its
// StopSignal becomes runckit's stop signal annotation and each of its
// Volumes a tmpfs. The rest is runckittest.NewSpec: private namespaces,
// network included, with loopback up.
func (img *Image) Spec(args ...string) (*specs.Spec, error) {
	cfg := img.Config.Config
	argv := append([]string(nil), cfg.Entrypoint...)
	if len(args) > 0 {
		argv = append(argv, args...)
	} else {
		argv = append(argv, cfg.Cmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("image: %s has neither Entrypoint nor Cmd, and no args were given: %w", img.Ref, errdefs.ErrInvalidArgument)
	}
	spec := runckittest.NewSpec("rootfs", argv...)
	spec.Root.Readonly = false
	p := spec.Process
	p.Env = append([]string(nil), cfg.Env...)
	if !hasEnv(p.Env, "PATH") {
		p.Env = append(p.Env, defaultPath)
	}
	if cfg.WorkingDir != "" {
		p.Cwd = cfg.WorkingDir
	}
	u, err := img.resolveUser(cfg.User)
	if err != nil {
		return nil, err
	}
	p.User = u.User
	if !hasEnv(p.Env, "HOME") {
		p.Env = append(p.Env, "HOME="+u.home)
	}
	if cfg.StopSignal != "" {
		if spec.Annotations == nil {
			spec.Annotations = map[string]string{}
		}
		spec.Annotations[runckit.StopSignalAnnotation] = cfg.StopSignal
	}
	var vols []string
	for v := range cfg.Volumes {
		vols = append(vols, v)
	}
	sort.Strings(vols)
	for _, v := range vols {
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: v, Type: "tmpfs", Source: "tmpfs",
			Options: []string{"nosuid", "nodev", "mode=1777"}})
	}
	return spec, nil
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

type resolvedUser struct {
	specs.User
	home string
}

// resolveUser turns the image's User ("", "name", "uid", "name:group",
// "uid:gid") into ids, reading the image's /etc/passwd and /etc/group
// inside its root.
func (img *Image) resolveUser(user string) (resolvedUser, error) {
	out := resolvedUser{home: "/"}
	if user == "" {
		user = "0"
	}
	name, group, hasGroup := strings.Cut(user, ":")
	passwd := img.readEtc("passwd")
	groups := img.readEtc("group")
	uid, uerr := strconv.ParseUint(name, 10, 32)
	found := false
	for _, f := range passwd {
		if len(f) < 7 {
			continue
		}
		if f[0] == name || (uerr == nil && f[2] == name) {
			id, _ := strconv.ParseUint(f[2], 10, 32)
			gid, _ := strconv.ParseUint(f[3], 10, 32)
			out.UID, out.GID, out.home, found = uint32(id), uint32(gid), f[5], true
			name = f[0]
			break
		}
	}
	if !found {
		if uerr != nil {
			return out, fmt.Errorf("image: %s: user %q is not in the image's /etc/passwd: %w", img.Ref, name, errdefs.ErrNotFound)
		}
		out.UID, out.GID = uint32(uid), uint32(uid)
	}
	if hasGroup {
		gid, gerr := strconv.ParseUint(group, 10, 32)
		if gerr == nil {
			out.GID = uint32(gid)
		} else {
			ok := false
			for _, f := range groups {
				if len(f) >= 3 && f[0] == group {
					id, _ := strconv.ParseUint(f[2], 10, 32)
					out.GID, ok = uint32(id), true
					break
				}
			}
			if !ok {
				return out, fmt.Errorf("image: %s: group %q is not in the image's /etc/group: %w", img.Ref, group, errdefs.ErrNotFound)
			}
		}
	}
	// Supplementary groups: those listing the user as a member.
	for _, f := range groups {
		if len(f) < 4 {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == name && name != "" {
				if id, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(id) != out.GID {
					out.AdditionalGids = append(out.AdditionalGids, uint32(id))
				}
			}
		}
	}
	return out, nil
}

// readEtc reads /etc/NAME of the image, resolved inside its root, as
// colon-separated fields per line; nil if it has none.
func (img *Image) readEtc(name string) [][]string {
	root, err := unix.Open(img.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, "etc/"+name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}

// Options returns what runckit.NewContainer needs to run the image in
// bundleDir: the spec (Spec with args) and an overlay mount that gives the
// container a writable layer of its own (bundleDir/upper) over the shared
// unpacked image. Delete unmounts it; removing bundleDir removes the layer.
func (img *Image) Options(bundleDir string, args ...string) ([]runckit.Option, error) {
	spec, err := img.Spec(args...)
	if err != nil {
		return nil, err
	}
	m, err := runckittest.OverlayMount(bundleDir, img.Rootfs)
	if err != nil {
		return nil, err
	}
	return []runckit.Option{runckit.WithSpec(spec), runckit.WithRootfsMounts(m)}, nil
}

// Start runs the image for a test, as runckittest.Start does: opts.Spec,
// when nil, is the image's Spec with opts.Args, and opts.Rootfs is the
// image's root.
func (img *Image) Start(t testing.TB, opts runckittest.Options) *runckittest.Container {
	t.Helper()
	if opts.Spec == nil {
		spec, err := img.Spec(opts.Args...)
		if err != nil {
			t.Fatal(err)
		}
		opts.Spec, opts.Args = spec, nil
	}
	opts.Rootfs = img.Rootfs
	return runckittest.Start(t, opts)
}
