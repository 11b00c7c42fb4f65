package runckit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Cmd is a command to run in a container, the counterpart of exec.Cmd for
// the common case. Make one with Container.Command, adjust its fields, then
// call Run, Output or CombinedOutput, once. Each run is an exec process with
// a generated ID ("run-1", "run-2"..., as its events show) that is deleted
// when the run ends, so IDs do not pile up.
// To start, signal and wait for a process yourself, or to give it a
// terminal, use Container.Exec.
type Cmd struct {
	// Spec is the process to run. Command derives it from the container's
	// own process (see Container.ProcessSpec); change any field (Env, Cwd,
	// User...) before running.
	Spec *specs.Process

	// Stdin, Stdout and Stderr are the command's streams, as in exec.Cmd:
	// nil is /dev/null, an *os.File is handed over as is, and any other
	// reader or writer is copied. When Stdout and Stderr are the same
	// writer, the process gets one pipe for both, so their order is kept.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Err is set by Command when the process spec could not be derived;
	// running the command returns it.
	Err error

	c    *Container
	used atomic.Bool
}

// ExitError reports that a command ran but failed: it exited with a
// non-zero code or was killed by a signal. Like exec.ExitError; get it with
// errors.As.
type ExitError struct {
	ExitStatus
	// Stderr holds the command's standard error when Output collected it
	// (Cmd.Stderr was nil); like exec.ExitError.Stderr, a long one keeps
	// its first and last 16 KiB.
	Stderr []byte

	what string // the command and its container, for the message
}

func (e *ExitError) Error() string {
	return "runckit: " + e.what + ": " + e.ExitStatus.String()
}

// Command returns a Cmd that runs args in the container, with the process
// settings of the container's own process. If those can not be read,
// Cmd.Err says why and running the Cmd returns it.
func (c *Container) Command(args ...string) *Cmd {
	spec, err := c.ProcessSpec(args...)
	if err != nil {
		spec = &specs.Process{Args: append([]string(nil), args...)}
	}
	return &Cmd{Spec: spec, Err: err, c: c}
}

// ProcessSpec returns a process spec for an exec that runs args as the
// container's own process runs: a copy of config.json's process (env, user,
// cwd, capabilities, rlimits, no_new_privileges, AppArmor profile, SELinux
// label, OOM score adjustment...) with Args replaced and Terminal false.
// The copy is the caller's to change. For a container adopted with
// LoadContainer it is read from the bundle's config.json.
func (c *Container) ProcessSpec(args ...string) (*specs.Process, error) {
	tmpl := c.procTemplate
	if tmpl == nil {
		var err error
		if tmpl, err = c.readProcessTemplate(); err != nil {
			return nil, err
		}
	}
	// A round trip through JSON copies every slice and pointer, so the
	// caller's changes never reach the template.
	data, err := json.Marshal(tmpl)
	if err != nil {
		return nil, fmt.Errorf("runckit: process spec of container %q: %w", c.id, err)
	}
	var p specs.Process
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("runckit: process spec of container %q: %w", c.id, err)
	}
	p.Args = append([]string(nil), args...)
	p.CommandLine = ""
	p.Terminal = false
	p.ConsoleSize = nil
	return &p, nil
}

// readProcessTemplate reads the process of the bundle's config.json, for a
// container that this run of the program did not create.
func (c *Container) readProcessTemplate() (*specs.Process, error) {
	path := filepath.Join(c.bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("runckit: process spec of container %q: %v: %w", c.id, err, errdefs.ErrNotFound)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("runckit: process spec of container %q: parse %s: %v: %w", c.id, path, err, errdefs.ErrDataLoss)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("runckit: process spec of container %q: %s has no process: %w", c.id, path, errdefs.ErrNotFound)
	}
	return spec.Process, nil
}

// Run runs the command and waits for it to finish and its output to be
// copied. A command that exits with a non-zero code or is killed by a
// signal returns an *ExitError. If ctx ends first, Run kills the process
// with SIGKILL, waits for it to be gone (in a paused container, that is
// once it is resumed) and returns an error wrapping ctx.Err().
func (cmd *Cmd) Run(ctx context.Context) error {
	return cmd.run(ctx, cmd.Stdout, cmd.Stderr)
}

// Output runs the command as Run does and returns its standard output,
// all that was written even when it fails. If Cmd.Stderr is nil, the
// standard error is collected into the *ExitError that a failed command
// returns.
func (cmd *Cmd) Output(ctx context.Context) ([]byte, error) {
	if cmd.Stdout != nil {
		return nil, fmt.Errorf("runckit: Output: Cmd.Stdout already set: %w", errdefs.ErrInvalidArgument)
	}
	var stdout lockedBuffer
	var saved *stderrSaver
	stderr := cmd.Stderr
	if stderr == nil {
		saved = &stderrSaver{half: 16 << 10}
		stderr = saved
	}
	err := cmd.run(ctx, &stdout, stderr)
	var ee *ExitError
	if saved != nil && errors.As(err, &ee) {
		ee.Stderr = saved.bytes()
	}
	return stdout.Bytes(), err
}

// CombinedOutput runs the command as Run does and returns its standard
// output and standard error together, in the order they were written.
func (cmd *Cmd) CombinedOutput(ctx context.Context) ([]byte, error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, fmt.Errorf("runckit: CombinedOutput: Cmd.Stdout or Cmd.Stderr already set: %w", errdefs.ErrInvalidArgument)
	}
	var out lockedBuffer
	err := cmd.run(ctx, &out, &out)
	return out.Bytes(), err
}

// what names the command and its container in messages.
func (cmd *Cmd) what() string {
	name := ""
	if cmd.Spec != nil && len(cmd.Spec.Args) > 0 {
		name = cmd.Spec.Args[0]
	}
	return fmt.Sprintf("command %q in container %q", name, cmd.c.id)
}

func (cmd *Cmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	if cmd.c == nil {
		return fmt.Errorf("runckit: Cmd not made by Container.Command: %w", errdefs.ErrInvalidArgument)
	}
	if cmd.Err != nil {
		return cmd.Err
	}
	if !cmd.used.CompareAndSwap(false, true) {
		return fmt.Errorf("runckit: %s: a Cmd runs once: %w", cmd.what(), errdefs.ErrFailedPrecondition)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("runckit: %s: not run: %w", cmd.what(), err)
	}
	c := cmd.c
	stdio := Stdio{Stdin: cmd.Stdin, Stdout: stdout, Stderr: stderr}
	p, err := c.execWithNewID(ctx, cmd.Spec, stdio)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		p.Delete(context.Background())
		return err
	}

	st, err := p.Wait(ctx)
	var ctxErr error
	if cerr := ctx.Err(); err != nil && cerr != nil && errors.Is(err, cerr) {
		// Only ctx ends a Wait on a started process early (a copy error or
		// the drain timeout comes with the exit status). The caller stops
		// waiting, but nothing is left running: kill, reap, delete.
		ctxErr = cerr
		p.Kill(context.Background(), syscall.SIGKILL)
		st, err = p.Wait(context.Background())
	}
	p.Delete(context.Background())

	switch {
	case ctxErr != nil:
		return fmt.Errorf("runckit: %s: killed when the context ended (%v): %w", cmd.what(), st, ctxErr)
	case !st.Success():
		return &ExitError{ExitStatus: st, what: cmd.what()}
	}
	return err
}

// execSeq numbers the execs of Cmds, program-wide.
var execSeq atomic.Uint64

// execWithNewID reserves an exec under a fresh ID, skipping IDs the caller
// has already taken for execs of their own.
func (c *Container) execWithNewID(ctx context.Context, spec *specs.Process, stdio Stdio) (*Process, error) {
	for range 100 {
		id := "run-" + strconv.FormatUint(execSeq.Add(1), 10)
		p, err := c.Exec(ctx, id, spec, stdio)
		if !errdefs.IsAlreadyExists(err) {
			return p, err
		}
	}
	return nil, fmt.Errorf("runckit: container %q: no free exec ID of the form run-N: %w", c.id, errdefs.ErrResourceExhausted)
}

// stderrSaver keeps the first and last half bytes written to it, for
// ExitError.Stderr: the start of an error output and its end are what
// explain it.
type stderrSaver struct {
	// mu guards the fields below: past the drain timeout a copy may still
	// be writing when Output reads them.
	mu      sync.Mutex
	half    int
	prefix  []byte
	suffix  []byte
	skipped int64
}

func (s *stderrSaver) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	if room := s.half - len(s.prefix); room > 0 {
		take := min(room, len(p))
		s.prefix = append(s.prefix, p[:take]...)
		p = p[take:]
	}
	s.suffix = append(s.suffix, p...)
	if over := len(s.suffix) - s.half; over > 0 {
		s.skipped += int64(over)
		s.suffix = append(s.suffix[:0], s.suffix[over:]...)
	}
	return n, nil
}

func (s *stderrSaver) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.skipped == 0 {
		return append(append([]byte(nil), s.prefix...), s.suffix...)
	}
	out := append([]byte(nil), s.prefix...)
	out = fmt.Appendf(out, "\n... omitting %d bytes ...\n", s.skipped)
	return append(out, s.suffix...)
}

// lockedBuffer is the buffer Output and CombinedOutput collect into: past
// the drain timeout a copy may still be writing when they return it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}
