package runckit

import (
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultRuntimeRoot is where runc keeps container state unless
// WithRuntimeRoot says otherwise. It is runckit's own, apart from runc's
// default /run/runc, so that runckit's containers do not mix with others.
const DefaultRuntimeRoot = "/run/runckit"

// DefaultDrainTimeout bounds how long Wait waits for a process's output
// after the process has exited.
const DefaultDrainTimeout = 5 * time.Second

// Mount is a filesystem mounted before runc create and unmounted when the
// container is deleted or its creation fails. Target is relative to the
// bundle directory; empty means the bundle's rootfs.
type Mount struct {
	Type    string
	Source  string
	Target  string
	Options []string
}

// RuntimeOptions are per-container settings for the runtime. They are
// written to the bundle (runckit.json, mode 0600) so that a later run of the
// program sees how the container was made.
type RuntimeOptions struct {
	SystemdCgroup bool `json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool `json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool `json:"no_new_keyring,omitempty"`
	// IOUid and IOGid own the pipes given to the container's processes, for
	// containers in a user namespace.
	IOUid int `json:"io_uid,omitempty"`
	IOGid int `json:"io_gid,omitempty"`
}

// Option configures a Container.
type Option func(*containerConfig) error

type containerConfig struct {
	sink          EventSink
	stdio         Stdio
	spec          *specs.Spec
	mounts        []Mount
	runtime       string
	runtimeRoot   string
	runtimeOpts   RuntimeOptions
	watcher       ExitWatcher
	drainTimeout  time.Duration
	stateDir      string
	killOnInitEnd bool // set from the spec: init shares the host PID namespace
}

func defaultConfig() containerConfig {
	return containerConfig{
		runtime:      "runc",
		runtimeRoot:  DefaultRuntimeRoot,
		drainTimeout: DefaultDrainTimeout,
	}
}

// newConfig applies opts to the defaults.
func newConfig(opts []Option) (containerConfig, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return containerConfig{}, err
		}
	}
	root, err := normalizeRoot(cfg.runtimeRoot)
	if err != nil {
		return containerConfig{}, err
	}
	cfg.runtimeRoot = root
	return cfg, nil
}

// exitWatcher is the watcher the options name, or the shared default.
func (c *containerConfig) exitWatcher() (ExitWatcher, error) {
	// Even with a watcher of the program's own, runckit signals through
	// pidfds: an old kernel is refused before runc runs.
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if c.watcher != nil {
		return c.watcher, nil
	}
	return sharedExitWatcher()
}

// WithEventSink sends the container's events to sink. The default discards
// them.
func WithEventSink(sink EventSink) Option {
	return func(c *containerConfig) error {
		if sink == nil {
			return fmt.Errorf("runckit: WithEventSink(nil): %w", errdefs.ErrInvalidArgument)
		}
		c.sink = sink
		return nil
	}
}

// WithStdio sets the init process's standard streams.
func WithStdio(s Stdio) Option {
	return func(c *containerConfig) error {
		c.stdio = s
		return nil
	}
}

// WithSpec writes spec as the bundle's config.json before runc create.
func WithSpec(spec *specs.Spec) Option {
	return func(c *containerConfig) error {
		if spec == nil {
			return fmt.Errorf("runckit: WithSpec(nil): %w", errdefs.ErrInvalidArgument)
		}
		c.spec = spec
		return nil
	}
}

// WithRootfsMounts mounts m, in order, before runc create.
func WithRootfsMounts(m ...Mount) Option {
	return func(c *containerConfig) error {
		for _, mt := range m {
			if mt.Type == "" && mt.Source == "" {
				return fmt.Errorf("runckit: rootfs mount with neither type nor source: %w", errdefs.ErrInvalidArgument)
			}
		}
		c.mounts = append(c.mounts, m...)
		return nil
	}
}

// WithRuntime sets the runtime binary, a name looked up in PATH or a path.
// The default is "runc".
func WithRuntime(binary string) Option {
	return func(c *containerConfig) error {
		if binary == "" {
			return fmt.Errorf("runckit: WithRuntime(\"\"): %w", errdefs.ErrInvalidArgument)
		}
		c.runtime = binary
		return nil
	}
}

// WithRuntimeRoot sets the runtime's state directory (runc --root). The
// default is DefaultRuntimeRoot. The path is made absolute and clean, with
// symlinks in its existing part resolved, so that every spelling of one
// directory is one root.
func WithRuntimeRoot(dir string) Option {
	return func(c *containerConfig) error {
		if dir == "" {
			return fmt.Errorf("runckit: WithRuntimeRoot(\"\"): %w", errdefs.ErrInvalidArgument)
		}
		c.runtimeRoot = dir
		return nil
	}
}

// WithRuntimeOptions sets per-container runtime options.
func WithRuntimeOptions(o RuntimeOptions) Option {
	return func(c *containerConfig) error {
		if o.IOUid < 0 || o.IOGid < 0 {
			return fmt.Errorf("runckit: negative IO uid/gid %d/%d: %w", o.IOUid, o.IOGid, errdefs.ErrInvalidArgument)
		}
		c.runtimeOpts = o
		return nil
	}
}

// WithExitWatcher replaces the shared default ExitWatcher.
func WithExitWatcher(w ExitWatcher) Option {
	return func(c *containerConfig) error {
		if w == nil {
			return fmt.Errorf("runckit: WithExitWatcher(nil): %w", errdefs.ErrInvalidArgument)
		}
		c.watcher = w
		return nil
	}
}

// WithDrainTimeout bounds how long Wait waits, after a process has exited,
// for its output to be copied (like exec.Cmd.WaitDelay). Zero waits forever.
// The default is DefaultDrainTimeout.
func WithDrainTimeout(d time.Duration) Option {
	return func(c *containerConfig) error {
		if d < 0 {
			return fmt.Errorf("runckit: negative drain timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		c.drainTimeout = d
		return nil
	}
}

// KillOption modifies Kill.
type KillOption func(*killConfig)

type killConfig struct{ all bool }

// KillAll signals every process in the container, not only init.
func KillAll() KillOption { return func(k *killConfig) { k.all = true } }

// DeleteOption modifies Delete.
type DeleteOption func(*deleteConfig)

type deleteConfig struct{ force bool }

// DeleteForce deletes a container whose init is still running, killing it.
func DeleteForce() DeleteOption { return func(d *deleteConfig) { d.force = true } }
