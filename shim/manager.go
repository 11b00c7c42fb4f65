// Package runckitshim is a containerd shim (runtime type
// io.containerd.runckit.v1) built on containerd's pkg/shim, whose task
// service translates the task API onto runckit. Every ordering decision
// (exec exits before init's, the delete event last) is runckit's.
package runckitshim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/runckit/runckit"
)

// RuntimeName is the runtime type containerd knows the shim by.
const RuntimeName = "io.containerd.runckit.v1"

// groupLabels are the annotations that put several containers in one shim:
// the first one present names the group. CRI sets the sandbox ID.
var groupLabels = []string{
	RuntimeName + ".group",
	"io.containerd.runc.v2.group",
	"io.kubernetes.cri.sandbox-id",
}

type manager struct{ name string }

// NewManager returns the shim.Shim that starts, stops and describes the
// runckit shim.
func NewManager(name string) shim.Shim { return manager{name: name} }

func (m manager) Name() string { return m.name }

// Start runs the shim server for the container in the current directory (its
// bundle), or finds the running one of its group, and returns its address.
func (m manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	id := params.GetInstanceID()
	group, err := groupOf(id)
	if err != nil {
		return nil, err
	}
	socketDir := params.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	addr, err := shim.CreateSocketAddress(ctx, socketDir, params.GetContainerdGrpcAddress(), group, false)
	if err != nil {
		return nil, err
	}
	res := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc", Address: addr}
	l, err := listen(addr)
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		return res, nil // the group's shim is already serving
	} else if err != nil {
		return nil, err
	}
	// Closing our copy must not unlink the socket the shim will serve on.
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		_ = shim.RemoveSocket(addr)
		return nil, err
	}
	defer f.Close()
	defer func() {
		if retErr != nil {
			_ = shim.RemoveSocket(addr)
		}
	}()

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", params.GetContainerdGrpcAddress()}
	if params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{f} // fd 3: pkg/shim serves on it
	// Its own process group, so that a signal to containerd's group does
	// not reach the shim.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go func() { _ = cmd.Wait() }()

	var ro options.Options
	if found, err := params.FindExtension(&ro); err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	} else if found && ro.ShimCgroup != "" {
		if err := joinCgroup(ro.ShimCgroup, cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return nil, fmt.Errorf("adjust the shim's OOM score: %w", err)
	}
	return res, nil
}

// listen makes the shim's socket; ErrAlreadyExists means a live shim serves
// it.
func listen(addr string) (*net.UnixListener, error) {
	l, err := shim.NewSocket(addr)
	if err == nil {
		return l, nil
	}
	if !shim.SocketEaddrinuse(err) {
		return nil, fmt.Errorf("create shim socket: %w", err)
	}
	if shim.CanConnect(addr) {
		return nil, errdefs.ErrAlreadyExists
	}
	// A dead shim's socket.
	if err := shim.RemoveSocket(addr); err != nil {
		return nil, fmt.Errorf("remove stale shim socket: %w", err)
	}
	return shim.NewSocket(addr)
}

// groupOf reads the bundle's config.json annotations for a group label.
func groupOf(id string) (string, error) {
	data, err := os.ReadFile("config.json")
	if err != nil {
		return "", err
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return "", fmt.Errorf("config.json: %w", err)
	}
	for _, l := range groupLabels {
		if g, ok := spec.Annotations[l]; ok && g != "" {
			return g, nil
		}
	}
	return id, nil
}

// joinCgroup moves pid into the cgroup path names (the ShimCgroup option:
// a path below each hierarchy's root): the one v2 directory on a unified
// host, else every v1 hierarchy mounted under /sys/fs/cgroup that has the
// directory, as containerd's cgroups library does for the stock shim.
func joinCgroup(path string, pid int) error {
	join := func(dir string) error {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", dir, err)
		}
		return nil
	}
	const root = "/sys/fs/cgroup"
	if cgroups.Mode() == cgroups.Unified {
		return join(filepath.Join(root, path))
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	joined := 0
	for _, e := range ents {
		// Co-mounted controllers appear once as a directory ("cpu,cpuacct")
		// and again as symlinks; "unified" is the v2 part of a hybrid host.
		if !e.IsDir() || e.Name() == "unified" {
			continue
		}
		dir := filepath.Join(root, e.Name(), path)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		if err := join(dir); err != nil {
			return err
		}
		joined++
	}
	if joined == 0 {
		return fmt.Errorf("cgroup %s is in no cgroup v1 hierarchy: %w", path, errdefs.ErrNotFound)
	}
	return nil
}

// Stop is `containerd-shim-runckit-v1 delete`: containerd runs it in the
// bundle of a container whose shim died, and also after every task delete
// (from its connection's close callback). It adopts the container from the
// records the shim kept and force-deletes it through runckit (runc delete,
// rootfs unmounted), and reports init's exit; without a record there is
// nothing of runckit's left.
func (m manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	if opts, ok := ctx.Value(shim.OptsKey{}).(shim.Opts); ok && opts.BundlePath != "" {
		bundle = opts.BundlePath
	}
	killed := shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}
	info, err := readShimInfo(bundle)
	if errors.Is(err, os.ErrNotExist) {
		// The shim died before it created the container: nothing of runckit's.
		return killed, nil
	} else if err != nil {
		return killed, err
	}
	killed.Pid = info.Pid
	c, err := runckit.LoadContainer(ctx, id, info.options()...)
	if errdefs.IsNotFound(err) {
		// The usual case: the task was deleted through the shim, which
		// removed the record, and containerd runs this after every delete.
		log.G(ctx).WithError(err).Debug("runckit: no record of the container; nothing to delete")
		return killed, nil
	} else if err != nil {
		log.G(ctx).WithError(err).Warn("runckit: adopting the container failed; nothing deleted")
		return killed, err
	}
	init := c.Init()
	if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
		return killed, err
	}
	st, err := init.Wait(ctx)
	if err != nil && !errors.Is(err, runckit.ErrDrainTimeout) {
		return killed, nil
	}
	if st.Unknown {
		// init was not our child (its shim died), so runckit saw it end
		// without a status; the forced delete SIGKILLed it.
		return shim.StopStatus{Pid: init.Pid(), ExitStatus: killed.ExitStatus, ExitedAt: st.ExitedAt}, nil
	}
	return shim.StopStatus{Pid: init.Pid(), ExitStatus: st.Code, ExitedAt: st.ExitedAt}, nil
}

// Info describes the shim to containerd.
func (m manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{
		Name:    m.name,
		Version: &types.RuntimeVersion{Version: version.Version, Revision: version.Revision},
	}
	opts, err := shim.ReadRuntimeOptions[*options.Options](optionsR)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("read runtime options: %w", err)
	}
	if opts != nil {
		if info.Options, err = typeurl.MarshalAnyToProto(opts); err != nil {
			return nil, err
		}
	}
	// The runtime's own features (runc features), as the stock shim
	// reports them: containerd's clients read them from RuntimeInfo.
	binary := "runc"
	if opts != nil && opts.BinaryName != "" {
		binary = opts.BinaryName
	}
	out, err := exec.CommandContext(ctx, binary, "features").Output()
	if err != nil {
		return nil, fmt.Errorf("%s features: %w", binary, err)
	}
	var f features.Features
	if err := json.Unmarshal(out, &f); err != nil {
		return nil, fmt.Errorf("%s features: %w", binary, err)
	}
	if info.Features, err = typeurl.MarshalAnyToProto(&f); err != nil {
		return nil, err
	}
	return info, nil
}
