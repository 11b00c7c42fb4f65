package runckitshim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
)

// DefaultRuntimeRoot is runc's state root when the runtime options name
// none; the namespace is appended. It is the stock runc shim's, so that
// tools that look for containerd's runc containers find these too.
const DefaultRuntimeRoot = "/run/containerd/runc"

// shimInfoFile, in the bundle, tells `shim delete` where runckit keeps the
// container's records and runc state.
const shimInfoFile = "runckit-shim.json"

func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

var empty = &ptypes.Empty{}

// service is the task API over runckit, for every container of the shim.
type service struct {
	ctx       context.Context
	publisher *orderedPublisher
	sd        shutdown.Service
	watcher   runckit.ExitWatcher

	mu    sync.Mutex
	tasks map[string]*shimTask
}

// shimTask is one container and what the task API needs of it that runckit
// does not keep: the stdio paths as containerd named them.
type shimTask struct {
	c      *runckit.Container
	bundle string

	mu sync.Mutex
	io map[string]taskIO // by exec ID; "" is init
}

type taskIO struct {
	stdin, stdout, stderr string
	terminal              bool
}

func newService(ctx context.Context, pub shim.Publisher, sd shutdown.Service) (taskAPI.TTRPCTaskService, error) {
	w, err := runckit.NewReapingExitWatcher()
	if err != nil {
		return nil, err
	}
	q := newOrderedPublisher(pub)
	s := &service{ctx: ctx, publisher: q, sd: sd, watcher: w, tasks: map[string]*shimTask{}}
	sd.RegisterCallback(q.Close)
	if address, err := shim.ReadAddress("address"); err == nil {
		sd.RegisterCallback(func(context.Context) error { return shim.RemoveSocket(address) })
	}
	return s, nil
}

// RegisterTTRPC serves the task API.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

func (s *service) get(id string) (*shimTask, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %q not created", id)
	}
	return t, nil
}

func (s *service) process(id, execID string) (*shimTask, *runckit.Process, error) {
	t, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return t, t.c.Init(), nil
	}
	p, err := t.c.Process(execID)
	if err != nil {
		return nil, nil, errgrpc.ToGRPC(err)
	}
	return t, p, nil
}

// shimInfo is what `shim delete` needs to adopt a container.
type shimInfo struct {
	Root     string `json:"root"`
	Runtime  string `json:"runtime,omitempty"`
	StateDir string `json:"state_dir"`
	Pid      int    `json:"pid,omitempty"`
}

func (i shimInfo) options() []runckit.Option {
	o := []runckit.Option{runckit.WithRuntimeRoot(i.Root), runckit.WithStateDir(i.StateDir)}
	if i.Runtime != "" {
		o = append(o, runckit.WithRuntime(i.Runtime))
	}
	return o
}

func readShimInfo(bundle string) (shimInfo, error) {
	var i shimInfo
	data, err := os.ReadFile(filepath.Join(bundle, shimInfoFile))
	if err != nil {
		return i, err
	}
	return i, json.Unmarshal(data, &i)
}

func writeShimInfo(bundle string, i shimInfo) error {
	data, err := json.Marshal(i)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, shimInfoFile), data, 0o600)
}

// runcOptions decodes the runtime options containerd sends: runc's options
// type, or CRI's generic one holding the same fields as TOML; anything else
// is refused.
func runcOptions(a typeurl.Any) (*options.Options, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return &options.Options{}, nil
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("runtime options %q: %v: %w", a.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	switch o := v.(type) {
	case *options.Options:
		return o, nil
	case *runtimeoptions.Options:
		return genericRuncOptions(o)
	}
	return nil, fmt.Errorf("runtime options of type %T: want %T: %w", v, &options.Options{}, errdefs.ErrInvalidArgument)
}

// genericRuncOptions reads the runc options from the generic type CRI sends
// to every runtime type but runc's own: the runtime's TOML options table,
// in the message or in the file it names. Keys are runc.v1.Options field
// names (BinaryName, Root, SystemdCgroup, ...), as for containerd's runc
// shim; an unknown key is refused rather than silently ignored.
func genericRuncOptions(g *runtimeoptions.Options) (*options.Options, error) {
	body := g.ConfigBody
	if g.ConfigPath != "" {
		b, err := os.ReadFile(g.ConfigPath)
		if err != nil {
			return nil, fmt.Errorf("runtime options file: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		body = b
	}
	o := &options.Options{}
	if err := decodeRuncOptions(body, o); err != nil {
		return nil, err
	}
	return o, nil
}

// Create makes the container with runc create through runckit.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if r.ID == "" || r.Bundle == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "create: container ID and bundle are required")
	}
	ro, err := runcOptions(r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	root := ro.Root
	if root == "" {
		root = DefaultRuntimeRoot
	}
	s.mu.Lock()
	_, exists := s.tasks[r.ID]
	s.mu.Unlock()
	if exists {
		// Before anything is written to the bundle, which may be the
		// running container's.
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "create: container %q already exists", r.ID)
	}
	if fi, err := os.Stat(r.Bundle); err != nil || !fi.IsDir() {
		// Not made here: MkdirAll below would make it.
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "create: bundle %q is not a directory", r.Bundle)
	}
	info := shimInfo{Root: filepath.Join(root, ns), Runtime: ro.BinaryName, StateDir: filepath.Join(r.Bundle, "runckit-state")}
	tio := taskIO{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	stdio := openStdio(tio, ns, "")
	t := &shimTask{bundle: r.Bundle, io: map[string]taskIO{"": tio}}
	created := &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
	}
	opts := append(info.options(),
		runckit.WithExitWatcher(s.watcher),
		runckit.WithEventSink(&sink{s: s, created: created}),
		runckit.WithStdio(stdio),
		runckit.WithRuntimeOptions(runckit.RuntimeOptions{
			SystemdCgroup: ro.SystemdCgroup,
			NoPivotRoot:   ro.NoPivotRoot,
			NoNewKeyring:  ro.NoNewKeyring,
			IOUid:         int(ro.IoUid),
			IOGid:         int(ro.IoGid),
		}))
	var mounts []runckit.Mount
	for _, m := range r.Rootfs {
		target := "" // runckit: the bundle's rootfs
		if m.Target != "" {
			target = filepath.Join("rootfs", m.Target)
		}
		mounts = append(mounts, runckit.Mount{Type: m.Type, Source: m.Source, Target: target, Options: m.Options})
	}
	if len(mounts) > 0 {
		opts = append(opts, runckit.WithRootfsMounts(mounts...))
	}
	// What the shim writes into the bundle is removed again if the create
	// fails, so that a refused request leaves the bundle as it was.
	undo := bundleUndo(r.Bundle, info.StateDir, shimInfoFile, "init.pid")
	if err := os.MkdirAll(info.StateDir, 0o700); err != nil {
		undo()
		return nil, errgrpc.ToGRPC(err)
	}
	if err := writeShimInfo(r.Bundle, info); err != nil {
		undo()
		return nil, errgrpc.ToGRPC(err)
	}
	// Tools written for the stock shim read init's pid from <bundle>/init.pid
	// while runc create runs (containerd's runc-fp failpoint wrapper does);
	// runckit writes it to init-<id>.pid, so the stock name links to it.
	initLink := filepath.Join(r.Bundle, "init.pid")
	_ = os.Remove(initLink)
	_ = os.Symlink("init-"+r.ID+".pid", initLink)
	var c *runckit.Container
	if r.Checkpoint != "" {
		c, err = runckit.Restore(ctx, r.ID, r.Bundle, runckit.RestoreOptions{ImagePath: r.Checkpoint, Terminal: r.Terminal}, opts...)
	} else {
		c, err = runckit.NewContainer(ctx, r.ID, r.Bundle, opts...)
	}
	if err != nil {
		undo()
		return nil, errgrpc.ToGRPC(err)
	}
	t.c = c
	info.Pid = c.Init().Pid()
	_ = writeShimInfo(r.Bundle, info)
	s.mu.Lock()
	s.tasks[r.ID] = t
	s.mu.Unlock()
	return &taskAPI.CreateTaskResponse{Pid: uint32(c.Init().Pid())}, nil
}

// bundleUndo notes which of the named bundle entries do not exist yet and
// returns a func that removes those (the state directory with what is in
// it), leaving entries that were there before alone.
func bundleUndo(bundle, stateDir string, names ...string) func() {
	var made []string
	for _, p := range append([]string{stateDir}, names...) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(bundle, p)
		}
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			made = append(made, p)
		}
	}
	return func() {
		for _, p := range made {
			_ = os.RemoveAll(p)
		}
	}
}

// Start starts init or an exec.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.Start(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StartResponse{Pid: uint32(p.Pid())}, nil
}

// Delete deletes an exec, or the container with init.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	var st runckit.ExitStatus
	if p.Status() == runckit.StatusStopped {
		st, _ = p.Wait(ctx)
	}
	if r.ExecID == "" {
		if p.Status() == runckit.StatusCreated {
			st.ExitedAt = time.Now()
		}
		if err := t.c.Delete(ctx); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		if p.Status() == runckit.StatusDeleted && st.ExitedAt.IsZero() {
			st, _ = p.Wait(ctx)
		}
		s.mu.Lock()
		delete(s.tasks, r.ID)
		s.mu.Unlock()
	} else {
		if err := p.Delete(ctx); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		t.mu.Lock()
		delete(t.io, r.ExecID)
		t.mu.Unlock()
	}
	return &taskAPI.DeleteResponse{
		Pid:        uint32(p.Pid()),
		ExitStatus: uint32(st.Code),
		ExitedAt:   protobuf.ToTimestamp(st.ExitedAt),
	}, nil
}

// Exec reserves an exec process in the container.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec: exec ID is required")
	}
	if r.Spec == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %q: no process spec", r.ExecID)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &spec); err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %q: process spec: %v", r.ExecID, err)
	}
	tio := taskIO{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	ns, _ := namespaces.Namespace(ctx)
	if _, err := t.c.Exec(ctx, r.ExecID, &spec, openStdio(tio, ns, r.ExecID)); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	t.mu.Lock()
	t.io[r.ExecID] = tio
	t.mu.Unlock()
	return empty, nil
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.Resize(uint16(r.Width), uint16(r.Height)); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// State reports a process as runckit tracks it.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	status := task.Status_UNKNOWN
	var st runckit.ExitStatus
	switch p.Status() {
	case runckit.StatusCreated:
		status = task.Status_CREATED
	case runckit.StatusRunning:
		status = task.Status_RUNNING
	case runckit.StatusPaused:
		status = task.Status_PAUSED
	case runckit.StatusStopped, runckit.StatusDeleted:
		status = task.Status_STOPPED
		st, _ = p.Wait(ctx)
	}
	t.mu.Lock()
	tio := t.io[r.ExecID]
	t.mu.Unlock()
	id := r.ExecID
	if id == "" {
		id = r.ID
	}
	return &taskAPI.StateResponse{
		ID:         id,
		Bundle:     t.bundle,
		Pid:        uint32(p.Pid()),
		Status:     status,
		Stdin:      tio.stdin,
		Stdout:     tio.stdout,
		Stderr:     tio.stderr,
		Terminal:   tio.terminal,
		ExitStatus: uint32(st.Code),
		ExitedAt:   protobuf.ToTimestamp(st.ExitedAt),
	}, nil
}

// Pause freezes the container.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := t.c.Pause(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// Resume thaws the container.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := t.c.Resume(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// Kill signals init (all of the container's processes with All) or an exec.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	t, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(r.Signal)
	if r.ExecID == "" {
		var ko []runckit.KillOption
		if r.All {
			ko = append(ko, runckit.KillAll())
		}
		err = t.c.Kill(ctx, sig, ko...)
	} else {
		err = p.Kill(ctx, sig)
	}
	if err != nil {
		if errdefs.IsFailedPrecondition(err) && p.Status() == runckit.StatusStopped {
			// containerd's clients take NotFound as "already exited".
			return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "kill %s: process already finished", r.ID+"/"+r.ExecID)
		}
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// Pids lists the container's processes, each exec's tagged with its ID.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	procs, err := t.c.Pids(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	res := &taskAPI.PidsResponse{}
	for _, pi := range procs {
		info := &task.ProcessInfo{Pid: uint32(pi.Pid)}
		if pi.ExecID != "" {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: pi.ExecID})
			if err != nil {
				return nil, errgrpc.ToGRPC(err)
			}
			info.Info = a
		}
		res.Processes = append(res.Processes, info)
	}
	sort.Slice(res.Processes, func(i, j int) bool { return res.Processes[i].Pid < res.Processes[j].Pid })
	return res, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		if err := p.CloseStdin(); err != nil && !errdefs.IsFailedPrecondition(err) {
			return nil, errgrpc.ToGRPC(err)
		}
	}
	return empty, nil
}

// Checkpoint checkpoints the container with runc and CRIU.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	co := runckit.CheckpointOptions{ImagePath: r.Path}
	if r.Options != nil && r.Options.GetTypeUrl() != "" {
		v, err := typeurl.UnmarshalAny(r.Options)
		if err != nil {
			return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "checkpoint options: %v", err)
		}
		o, ok := v.(*options.CheckpointOptions)
		if !ok {
			return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "checkpoint options of type %T", v)
		}
		co.LeaveRunning = !o.Exit
		co.TCPEstablished = o.OpenTcp
		co.ExternalUnixSockets = o.ExternalUnixSockets
		co.Terminal = o.Terminal
		co.FileLocks = o.FileLocks
		co.EmptyNamespaces = o.EmptyNamespaces
		co.WorkPath = o.WorkPath
		if o.ImagePath != "" {
			co.ImagePath = o.ImagePath
		}
	}
	if err := t.c.Checkpoint(ctx, co); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// Update changes the container's resources.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	var res specs.LinuxResources
	if r.Resources != nil {
		if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
			return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "update: resources: %v", err)
		}
	}
	if err := t.c.Update(ctx, &res); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// Wait waits for a process's exit.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, err := waitProcess(ctx, p)
	if err != nil && !errors.Is(err, runckit.ErrDrainTimeout) {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.WaitResponse{ExitStatus: uint32(st.Code), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}, nil
}

// waitProcess is Process.Wait, which blocks on an exec that is not yet
// started (containerd's client sends Wait before Start). A failed start
// leaves the exec created and startable again, so the wait goes on: it
// ends with the exec's exit, or when the exec is deleted.
func waitProcess(ctx context.Context, p *runckit.Process) (runckit.ExitStatus, error) {
	for {
		st, err := p.Wait(ctx)
		if p.ID() == "" || !errdefs.IsFailedPrecondition(err) || ctx.Err() != nil {
			return st, err
		}
	}
}

// Connect reports the shim's and the task's pids.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	res := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if t, err := s.get(r.ID); err == nil {
		res.TaskPid = uint32(t.c.Init().Pid())
	}
	return res, nil
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tasks) > 0 {
		return empty, nil
	}
	s.sd.Shutdown()
	return empty, nil
}

// Stats reports the container's cgroup figures as containerd's metrics type.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	st, err := t.c.Stats(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	a, err := typeurl.MarshalAnyToProto(st.Raw) // containerd's v1 or v2 metrics, as the stock shim returns
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// sink publishes a container's runckit events, in runckit's order, as
// containerd's task events.
type sink struct {
	s       *service
	created *eventstypes.TaskCreate
}

// Send is called by runckit from one goroutine per container, in order;
// Publish queues in that order and one goroutine forwards the queue, so the
// order reaches containerd.
func (k *sink) Send(e runckit.Event) {
	var ev any
	switch e.Kind {
	case runckit.EventCreate:
		c := k.created
		ev = &eventstypes.TaskCreate{ContainerID: c.ContainerID, Bundle: c.Bundle, Rootfs: c.Rootfs, IO: c.IO,
			Checkpoint: c.Checkpoint, Pid: uint32(e.Pid)}
	case runckit.EventStart:
		ev = &eventstypes.TaskStart{ContainerID: e.ContainerID, Pid: uint32(e.Pid)}
	case runckit.EventExecAdded:
		ev = &eventstypes.TaskExecAdded{ContainerID: e.ContainerID, ExecID: e.ExecID}
	case runckit.EventExecStarted:
		ev = &eventstypes.TaskExecStarted{ContainerID: e.ContainerID, ExecID: e.ExecID, Pid: uint32(e.Pid)}
	case runckit.EventExit:
		id := e.ExecID
		if id == "" {
			id = e.ContainerID
		}
		ev = &eventstypes.TaskExit{ContainerID: e.ContainerID, ID: id, Pid: uint32(e.Pid),
			ExitStatus: uint32(e.Status.Code), ExitedAt: protobuf.ToTimestamp(e.Status.ExitedAt)}
	case runckit.EventPause:
		ev = &eventstypes.TaskPaused{ContainerID: e.ContainerID}
	case runckit.EventResume:
		ev = &eventstypes.TaskResumed{ContainerID: e.ContainerID}
	case runckit.EventOOM:
		ev = &eventstypes.TaskOOM{ContainerID: e.ContainerID}
	case runckit.EventDelete:
		ev = &eventstypes.TaskDelete{ContainerID: e.ContainerID, Pid: uint32(e.Pid),
			ExitStatus: uint32(e.Status.Code), ExitedAt: protobuf.ToTimestamp(e.Status.ExitedAt)}
	default:
		return
	}
	ctx := context.WithoutCancel(k.s.ctx)
	if err := k.s.publisher.Publish(ctx, runtime.GetTopic(ev), ev); err != nil {
		log.G(ctx).WithError(err).WithField("event", e.String()).Error("runckit shim: publish event")
	}
}
