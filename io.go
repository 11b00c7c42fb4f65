package runckit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Stdio is a process's standard streams, as in os/exec: a nil field is
// connected to /dev/null, an *os.File is handed to the process as it is, and
// any other reader or writer is fed by a copy goroutine that ends with the
// process.
//
// As in os/exec, when Stdout and Stderr are the same writer (equal with ==)
// the process gets one pipe for both, so at most one goroutine at a time
// calls its Write, and the two streams arrive in the order they were
// written. Two different writers are written concurrently.
//
// When a Write to Stdout or Stderr fails, Wait returns that error (the first
// one, naming the stream) together with the exit status. The copy of that
// stream stops and its pipe is closed, so a process that goes on writing to
// it gets EPIPE or SIGPIPE, as with os/exec. A terminal has no such signal:
// after a failed Write its output is read and dropped, so that the process
// does not stall on a full terminal.
//
// The drain timeout (WithDrainTimeout) also bounds a Write that blocks: past
// it, Wait returns ErrDrainTimeout without waiting for the copy, which ends
// on its own once the Write returns; nothing more is written after that.
//
// Process.CloseStdin closes the pipe that feeds a Stdin reader (or a FIFO
// StdinPath), so the process reads EOF. What the reader had already
// returned is delivered first (CloseStdin waits up to 100ms for that); what
// it returns later is dropped. With a terminal, it stops copying
// from Stdin and types the terminal's end-of-file character (VEOF, ^D), so a
// process reading the terminal in canonical mode, as a shell or cat does,
// reads EOF; a program that put its terminal in raw mode gets the byte. The
// end of a Stdin reader on a terminal is not an EOF for the process: call
// CloseStdin. Without a pipe of runckit's (Stdin nil, an *os.File, or a plain
// file path), CloseStdin fails with ErrFailedPrecondition.
//
// For shims, a stream may instead name a path: "fifo:///run/x/stdout" opens a
// FIFO, "file:///var/log/x" appends to a file, and a plain absolute path is
// either, depending on what is there. A stream may have a reader/writer or a
// path, not both. StdoutPath and StderrPath may also name a logging binary,
// "binary:///usr/bin/logger?key=value", which runckit starts and hands the
// stream to, with containerd's protocol for shim loggers (see binlog.go:
// fds 3 and 4, ready on fd 5, CONTAINER_ID and CONTAINER_NAMESPACE); the
// same URI for both starts one logger.
type Stdio struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Terminal gives the process a pseudo-terminal. Its output, stdout and
	// stderr merged as on a real terminal, goes to Stdout or StdoutPath
	// (a file, a FIFO or a logging binary); Stderr and StderrPath must be
	// unset. Its input comes from Stdin or StdinPath.
	Terminal bool

	StdinPath  string
	StdoutPath string
	StderrPath string

	// LogNamespace is CONTAINER_NAMESPACE for logging binaries (binary://
	// stream URIs). runckit has no namespaces; a containerd shim passes the
	// request's. Empty by default.
	LogNamespace string
	// LogID is CONTAINER_ID for logging binaries; empty means the
	// container's ID, for init and execs alike. containerd's runc shim
	// gives an exec's logger the exec's ID.
	LogID string
}

// stdioKind is how one stream reaches the process.
type stdioKind int

const (
	streamNull   stdioKind = iota
	streamFile             // an *os.File or opened path handed over as is
	streamCopy             // a pipe fed or drained by a copy goroutine
	streamFIFOIn           // a FIFO opened for reading in the background, then copied
)

// parseStdioPath turns a stream path or URI into a filesystem path and
// whether it must be a FIFO.
func parseStdioPath(name, raw string) (path string, fifo bool, err error) {
	if raw == "" {
		return "", false, nil
	}
	if raw[0] == '/' {
		fi, err := os.Stat(raw)
		if err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
			return raw, true, nil
		}
		return raw, false, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, fmt.Errorf("runckit: %s %q: %v: %w", name, raw, err, errdefs.ErrInvalidArgument)
	}
	if u.Path == "" || u.Path[0] != '/' || u.Host != "" {
		return "", false, fmt.Errorf("runckit: %s %q: want scheme:///absolute/path: %w", name, raw, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "fifo":
		return u.Path, true, nil
	case "file":
		return u.Path, false, nil
	case "binary", "binary-v2":
		return "", false, fmt.Errorf("runckit: %s %q: a logging binary takes output, not input: %w", name, raw, errdefs.ErrInvalidArgument)
	}
	return "", false, fmt.Errorf("runckit: %s %q: unknown scheme %q (want fifo, file, binary or an absolute path): %w",
		name, raw, u.Scheme, errdefs.ErrInvalidArgument)
}

func (s Stdio) validate() error {
	if s.Stdin != nil && s.StdinPath != "" {
		return fmt.Errorf("runckit: Stdin and StdinPath both set: %w", errdefs.ErrInvalidArgument)
	}
	if s.Stdout != nil && s.StdoutPath != "" {
		return fmt.Errorf("runckit: Stdout and StdoutPath both set: %w", errdefs.ErrInvalidArgument)
	}
	if s.Stderr != nil && s.StderrPath != "" {
		return fmt.Errorf("runckit: Stderr and StderrPath both set: %w", errdefs.ErrInvalidArgument)
	}
	if s.Terminal && (s.Stderr != nil || s.StderrPath != "") {
		return fmt.Errorf("runckit: a terminal merges stderr into stdout; leave Stderr unset: %w", errdefs.ErrInvalidArgument)
	}
	for _, p := range []struct{ name, v string }{{"StdinPath", s.StdinPath}, {"StdoutPath", s.StdoutPath}, {"StderrPath", s.StderrPath}} {
		if p.name != "StdinPath" {
			if u, ok, err := parseLoggerURI(p.name, p.v); ok {
				if err == nil {
					err = checkLoggerBinary(p.name, u)
				}
				if err != nil {
					return err
				}
				continue
			}
		}
		if _, _, err := parseStdioPath(p.name, p.v); err != nil {
			return err
		}
	}
	return nil
}

// processIO owns everything that connects one process to its Stdio: the
// pipe ends, opened files, the console socket and the terminal master, and
// the copy goroutines. Its lifecycle: newProcessIO before runc, then either
// abort (runc failed) or started (runc succeeded), then wait after exit.
type processIO struct {
	stdio Stdio

	// Set before runc runs and not changed after.
	child   [3]*os.File // the ends the process gets; closed here once runc has them
	host    []io.Closer // our ends and opened files, closed by abort or when copies end
	socket  *runc.Socket
	copiers []func() // copy loops started by started()
	inputs  []func() // stdin loops: not waited for, as os/exec

	drained     chan struct{} // closed, once, when every output copy has ended
	drainedOnce sync.Once

	mu       sync.Mutex // guards master, masterIO and closed
	master   console.Console
	masterIO *os.File // non-blocking second fd of master, for the copies
	closed   bool

	outputs sync.WaitGroup
	readEnd []*os.File // output read ends, force-closed when draining times out

	errMu   sync.Mutex
	copyErr error // the first failed Write to Stdout or Stderr

	stdinW *os.File // write end of the stdin pipe, for CloseStdin
	// noStdin says why there is nothing for CloseStdin to close.
	noStdin string
	// inputDone is closed when the copy from a Stdin reader ends; nil
	// without one.
	inputDone chan struct{}
	// stdinMu guards the CloseStdin state the input copy looks at.
	stdinMu     sync.Mutex
	stdinClosed bool // CloseStdin was called: copy nothing more
	stdinGaveUp bool // CloseStdin stopped waiting: drop what Read returns
	lastIn      byte // last byte copied in, 0 if none

	// loggers are the logging binaries the output goes to (binary://
	// paths), ready before runc runs; each one's exit is one of the copies
	// wait waits for.
	loggers []*binaryLogger

	// With a terminal and paths: termOut is where the terminal's output is
	// copied (StdoutPath: a file, a FIFO or a logger's pipe), closed when
	// the copy ends; termIn is what is copied into the terminal (StdinPath:
	// a file, or the pipe a FIFO's input loop feeds). Both are in host.
	termOut *os.File
	termIn  *os.File
}

// stdinCloseGrace is how long CloseStdin waits for the input copy to
// deliver what it already took from Stdin. The copy can not be told apart
// from one parked in Stdin's Read until it reaches the next Read, so a
// CloseStdin while it is parked there (the usual case) costs this once.
const stdinCloseGrace = 100 * time.Millisecond

// newProcessIO sets up the IO for one process of container containerID.
// ctx bounds the start of logging binaries.
func newProcessIO(ctx context.Context, s Stdio, containerID string, uid, gid int) (pio *processIO, err error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	if s.LogID != "" {
		containerID = s.LogID // only loggers are told the ID
	}
	p := &processIO{stdio: s, drained: make(chan struct{})}
	pio = p
	defer func() {
		if err != nil {
			p.abort() // not pio: the error return has set it to nil
		}
	}()
	if s.Terminal {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("runckit: console socket: %w", err)
		}
		pio.socket = sock
		return pio, pio.setupTerminalPaths(ctx, s, containerID)
	}
	if err := pio.setupInput(s.Stdin, s.StdinPath, uid, gid); err != nil {
		return nil, err
	}
	if err := pio.setupLoggers(ctx, s, containerID, uid, gid); err != nil {
		return nil, err
	}
	if pio.child[1] == nil {
		if err := pio.setupOutput(1, "StdoutPath", s.Stdout, s.StdoutPath, uid, gid); err != nil {
			return nil, err
		}
	}
	if s.StdoutPath == "" && s.StderrPath == "" && sameWriter(s.Stdout, s.Stderr) {
		// One pipe (or file) for both, as os/exec does: one copy goroutine
		// writes to the shared writer, never two at once.
		pio.child[2] = pio.child[1]
		return pio, nil
	}
	if pio.child[2] == nil {
		if err := pio.setupOutput(2, "StderrPath", s.Stderr, s.StderrPath, uid, gid); err != nil {
			return nil, err
		}
	}
	return pio, nil
}

// sameWriter reports whether a and b are the same non-nil writer. Writers
// of a type that can not be compared are taken as different, as os/exec
// does.
func sameWriter(a, b io.Writer) (same bool) {
	if a == nil || b == nil {
		return false
	}
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// openError describes a stream path that could not be opened, with the
// errdefs kind of the common causes: the path (or its directory) missing,
// or no permission.
func openError(name string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("runckit: %s: %w: %w", name, err, errdefs.ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("runckit: %s: %w: %w", name, err, errdefs.ErrPermissionDenied)
	}
	return fmt.Errorf("runckit: %s: %w", name, err)
}

func openNull(flag int) (*os.File, error) {
	f, err := os.OpenFile(os.DevNull, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("runckit: open %s: %w", os.DevNull, err)
	}
	return f, nil
}

// newPipe makes a pipe whose ends are owned by uid/gid when those are set,
// so that a process in a user namespace can use its end.
func newPipe(uid, gid int) (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("runckit: pipe: %w", err)
	}
	if uid != 0 || gid != 0 {
		for _, f := range []*os.File{r, w} {
			if err := f.Chown(uid, gid); err != nil {
				r.Close()
				w.Close()
				return nil, nil, fmt.Errorf("runckit: chown pipe to %d:%d: %w", uid, gid, err)
			}
		}
	}
	return r, w, nil
}

func (pio *processIO) setupInput(r io.Reader, path string, uid, gid int) error {
	p, fifo, err := parseStdioPath("StdinPath", path)
	if err != nil {
		return err
	}
	switch {
	case p != "" && !fifo:
		f, err := os.Open(p)
		if err != nil {
			return openError("StdinPath", err)
		}
		pio.child[0] = f
		pio.noStdin = "StdinPath names a file, which the process reads itself"
		return nil
	case p != "" && fifo:
		return pio.setupFIFOInput(p, uid, gid)
	case r == nil:
		f, err := openNull(os.O_RDONLY)
		pio.child[0] = f
		pio.noStdin = "Stdin is nil: the process reads /dev/null"
		return err
	}
	if f, ok := r.(*os.File); ok {
		pio.child[0] = f
		pio.noStdin = "Stdin is an *os.File, handed to the process as it is: close your end of it instead"
		return nil
	}
	pr, pw, err := newPipe(uid, gid)
	if err != nil {
		return err
	}
	pio.child[0] = pr
	pio.host = append(pio.host, pw)
	pio.stdinW = pw
	pio.inputDone = make(chan struct{})
	pio.inputs = append(pio.inputs, func() {
		pio.copyInput(r, pw)
		pw.Close()
	})
	return nil
}

// setupFIFOInput feeds stdin from a FIFO. Opening a FIFO for reading blocks
// until a writer appears, so it happens in the input loop; if the process
// ends first, wait unblocks the open by briefly becoming the writer.
func (pio *processIO) setupFIFOInput(path string, uid, gid int) error {
	fi, err := os.Stat(path)
	if err != nil {
		return openError("StdinPath", err)
	}
	if fi.Mode()&os.ModeNamedPipe == 0 {
		return fmt.Errorf("runckit: StdinPath %q is not a FIFO: %w", path, errdefs.ErrInvalidArgument)
	}
	pr, pw, err := newPipe(uid, gid)
	if err != nil {
		return err
	}
	pio.child[0] = pr
	pio.stdinW = pw
	pio.host = append(pio.host, pw, fifoUnblocker(path))
	pio.inputs = append(pio.inputs, func() {
		defer pw.Close()
		f, err := os.OpenFile(path, os.O_RDONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		io.Copy(pw, f)
	})
	return nil
}

// fifoUnblocker is closed with the process's IO; it opens the FIFO for
// writing without blocking, which releases an open for reading that is still
// waiting, then closes it again so that the reader sees EOF.
type fifoUnblocker string

func (u fifoUnblocker) Close() error {
	fd, err := unix.Open(string(u), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	return nil
}

func (pio *processIO) setupOutput(fd int, name string, w io.Writer, path string, uid, gid int) error {
	p, fifo, err := parseStdioPath(name, path)
	if err != nil {
		return err
	}
	switch {
	case p != "" && fifo:
		// O_RDWR never blocks on a FIFO, and the process can write before a
		// reader has connected; the reader sees EOF when the process exits.
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return openError(name, err)
		}
		pio.child[fd] = f
		return nil
	case p != "":
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return openError(name, err)
		}
		pio.child[fd] = f
		return nil
	case w == nil:
		f, err := openNull(os.O_WRONLY)
		pio.child[fd] = f
		return err
	}
	if f, ok := w.(*os.File); ok {
		pio.child[fd] = f
		return nil
	}
	pr, pw, err := newPipe(uid, gid)
	if err != nil {
		return err
	}
	stream := "stdout"
	switch {
	case fd == 2:
		stream = "stderr"
	case sameWriter(pio.stdio.Stdout, pio.stdio.Stderr):
		stream = "stdout and stderr"
	}
	pio.child[fd] = pw
	pio.host = append(pio.host, pr)
	pio.readEnd = append(pio.readEnd, pr)
	pio.copiers = append(pio.copiers, func() {
		// Closing the read end when the copy stops early (the writer
		// failed) makes the process's next write fail with EPIPE.
		pio.copyOutput(stream, w, pr, false)
		pr.Close()
	})
	return nil
}

// copyOutput copies r to w until r ends. A failed Write is kept for Wait;
// then the copy stops, or, with discard, reads on and drops the rest.
// Errors reading r are the stream's end (EOF; EIO from a terminal once the
// process is gone; a read end closed at the drain timeout).
func (pio *processIO) copyOutput(stream string, w io.Writer, r io.Reader, discard bool) {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := r.Read(buf)
		if n > 0 && w != nil {
			m, werr := w.Write(buf[:n])
			if werr == nil && m != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				pio.setCopyErr(fmt.Errorf("runckit: copy %s to its writer: %w", stream, werr))
				if !discard {
					return
				}
				w = nil
			}
		}
		if rerr != nil {
			return
		}
	}
}

func (pio *processIO) setCopyErr(err error) {
	pio.errMu.Lock()
	defer pio.errMu.Unlock()
	if pio.copyErr == nil {
		pio.copyErr = err
	}
}

// runcIO is what go-runc hands to the runc command: the child ends as its
// stdio. With a terminal, runc gets no stdio of ours and go-runc collects
// its output for error messages instead.
func (pio *processIO) runcIO() runc.IO {
	if pio.stdio.Terminal {
		return nil
	}
	return childStdio{pio}
}

func (pio *processIO) consoleSocket() runc.ConsoleSocket {
	if pio.socket == nil {
		return nil
	}
	return pio.socket
}

// childStdio implements runc.IO over processIO's child ends.
type childStdio struct{ pio *processIO }

func (c childStdio) Close() error          { return nil }
func (c childStdio) Stdin() io.WriteCloser { return nil }
func (c childStdio) Stdout() io.ReadCloser { return nil }
func (c childStdio) Stderr() io.ReadCloser { return nil }
func (c childStdio) Set(cmd *exec.Cmd) {
	cmd.Stdin = c.pio.child[0]
	cmd.Stdout = c.pio.child[1]
	cmd.Stderr = c.pio.child[2]
}

// closeChildEnds drops our copies of the ends the process got, so that the
// output pipes reach EOF when the process and its children have exited.
// Files the caller passed in are theirs and stay open.
func (pio *processIO) closeChildEnds() {
	for i, f := range pio.child {
		if f == nil {
			continue
		}
		shared := i == 2 && f == pio.child[1] // stdout and stderr share one end
		if !shared && !pio.callerOwns(i, f) {
			f.Close()
		}
	}
	pio.child = [3]*os.File{}
}

func (pio *processIO) callerOwns(fd int, f *os.File) bool {
	switch fd {
	case 0:
		cf, ok := pio.stdio.Stdin.(*os.File)
		return ok && cf == f
	case 1:
		cf, ok := pio.stdio.Stdout.(*os.File)
		return ok && cf == f
	case 2:
		cf, ok := pio.stdio.Stderr.(*os.File)
		return ok && cf == f
	}
	return false
}

// abort releases everything after runc failed: no goroutine was started,
// so closing the ends is enough.
func (pio *processIO) abort() {
	pio.closeChildEnds()
	for _, c := range pio.host {
		c.Close()
	}
	pio.host = nil
	if pio.socket != nil {
		pio.socket.Close()
		pio.socket = nil
	}
	pio.stopLoggers()
	pio.markDrained()
}

func (pio *processIO) markDrained() {
	pio.drainedOnce.Do(func() { close(pio.drained) })
}

// started runs once runc has started the process: it drops the child ends,
// receives the terminal master if there is one, and starts the copy loops.
func (pio *processIO) started(ctx context.Context) error {
	pio.closeChildEnds()
	if pio.socket != nil {
		master, err := receiveMaster(ctx, pio.socket)
		pio.socket.Close()
		pio.socket = nil
		if err != nil {
			pio.abortHost()
			return fmt.Errorf("runckit: receive terminal master: %w", err)
		}
		masterIO, err := pollableMaster(master)
		if err != nil {
			master.Close()
			pio.abortHost()
			return fmt.Errorf("runckit: %w", err)
		}
		pio.mu.Lock()
		pio.master, pio.masterIO = master, masterIO
		pio.mu.Unlock()
		pio.addTerminalCopies(masterIO)
	}
	for _, in := range pio.inputs {
		go in()
	}
	pio.outputs.Add(len(pio.copiers))
	for _, out := range pio.copiers {
		go func() {
			defer pio.outputs.Done()
			out()
		}()
	}
	go func() {
		pio.outputs.Wait()
		pio.markDrained()
	}()
	return nil
}

func (pio *processIO) abortHost() {
	for _, c := range pio.host {
		c.Close()
	}
	pio.host = nil
	pio.stopLoggers()
	pio.markDrained()
}

// receiveMaster waits for runc to send the pty master over the console
// socket. runc sends it before create or exec returns, so this does not wait
// long; ctx bounds it anyway.
func receiveMaster(ctx context.Context, sock *runc.Socket) (console.Console, error) {
	type result struct {
		c   console.Console
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := sock.ReceiveMaster()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		sock.Close() // unblocks the accept
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, ctx.Err()
	}
}

// pollableMaster returns a second descriptor of the terminal master, in
// non-blocking mode, for the copies. runc sends a blocking fd, which Go
// reads outside its poller, so closing it would not interrupt a blocked
// Read; through the poller it does, which lets the drain timeout end the
// copy when a daemonised child keeps the terminal open. The console keeps
// the original for ioctls (its Fd does not change the mode back, because
// os.NewFile saw it blocking).
func pollableMaster(c console.Console) (*os.File, error) {
	fd, err := unix.FcntlInt(c.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup terminal master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("terminal master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), c.Name()), nil
}

func (pio *processIO) addTerminalCopies(master *os.File) {
	var w io.Writer = pio.stdio.Stdout // nil: the output is read and dropped
	if out := pio.termOut; out != nil {
		w = out
	}
	pio.copiers = append(pio.copiers, func() {
		pio.copyOutput("terminal output", w, master, true)
		if pio.termOut != nil {
			pio.termOut.Close() // a logger or FIFO reader sees the end
		}
	})
	r := pio.stdio.Stdin
	if pio.termIn != nil {
		r = pio.termIn
	}
	if r != nil {
		pio.inputDone = make(chan struct{})
		pio.inputs = append(pio.inputs, func() { pio.copyInput(r, master) })
	}
}

// setupTerminalPaths resolves StdinPath and StdoutPath for a terminal with
// the same set-up as without one: the ends the process would have got go
// to the copies into and out of the terminal instead (a FIFO's input loop
// still feeds its pipe; the terminal copy reads the pipe). The process
// itself only gets the terminal.
func (pio *processIO) setupTerminalPaths(ctx context.Context, s Stdio, containerID string) error {
	if s.StdoutPath != "" {
		if err := pio.setupLoggers(ctx, s, containerID, 0, 0); err != nil {
			return err
		}
		if pio.child[1] == nil {
			if err := pio.setupOutput(1, "StdoutPath", nil, s.StdoutPath, 0, 0); err != nil {
				return err
			}
		}
		pio.termOut, pio.child[1] = pio.child[1], nil
		pio.host = append(pio.host, pio.termOut)
	}
	if s.StdinPath != "" {
		if err := pio.setupInput(nil, s.StdinPath, 0, 0); err != nil {
			return err
		}
		pio.termIn, pio.child[0] = pio.child[0], nil
		pio.host = append(pio.host, pio.termIn)
	}
	return nil
}

// copyInput copies r into w (the stdin pipe, or the terminal) until r ends,
// w fails, or CloseStdin is called. What a Read returned before CloseStdin
// is still written, unless CloseStdin gave up waiting for it.
func (pio *processIO) copyInput(r io.Reader, w *os.File) {
	defer close(pio.inputDone)
	buf := make([]byte, 32<<10)
	for {
		pio.stdinMu.Lock()
		closed := pio.stdinClosed
		pio.stdinMu.Unlock()
		if closed {
			return
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			pio.stdinMu.Lock()
			gaveUp := pio.stdinGaveUp
			pio.stdinMu.Unlock()
			if gaveUp {
				return
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			pio.stdinMu.Lock()
			pio.lastIn = buf[n-1]
			pio.stdinMu.Unlock()
		}
		if rerr != nil {
			return
		}
	}
}

// stopInput stops the copy from Stdin: it lets the copy finish writing
// what it holds, waiting at most stdinCloseGrace. It reports false if
// CloseStdin was called before.
func (pio *processIO) stopInput() bool {
	pio.stdinMu.Lock()
	if pio.stdinClosed {
		pio.stdinMu.Unlock()
		return false
	}
	pio.stdinClosed = true
	pio.stdinMu.Unlock()
	if pio.inputDone == nil {
		return true
	}
	t := time.NewTimer(stdinCloseGrace)
	defer t.Stop()
	select {
	case <-pio.inputDone:
	case <-t.C:
		pio.stdinMu.Lock()
		pio.stdinGaveUp = true
		pio.stdinMu.Unlock()
	}
	return true
}

// hasOutputCopies reports whether wait may have to wait for output: false
// for a process whose outputs are files or /dev/null. Safe on nil.
func (pio *processIO) hasOutputCopies() bool {
	return pio != nil && len(pio.copiers) > 0
}

// resize sets the terminal's window size.
func (pio *processIO) resize(width, height uint16) error {
	pio.mu.Lock()
	defer pio.mu.Unlock()
	if pio.master == nil || pio.closed {
		return fmt.Errorf("runckit: process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return pio.master.Resize(console.WinSize{Width: width, Height: height})
}

// closeStdin closes the write end of the process's stdin pipe, so that a
// reader in the process sees EOF; with a terminal it types the terminal's
// EOF character instead (see Stdio). Closing twice is not an error.
func (pio *processIO) closeStdin() error {
	if pio.stdio.Terminal {
		return pio.terminalEOF()
	}
	if pio.stdinW == nil {
		return fmt.Errorf("the process has no stdin pipe (%s): %w", pio.noStdin, errdefs.ErrFailedPrecondition)
	}
	if pio.stopInput() {
		pio.stdinW.Close()
	}
	return nil
}

// terminalEOF stops the copy from Stdin and types VEOF into the terminal:
// twice if the last line typed is unfinished, since the first only ends
// that line. It may wait while the terminal's input queue is full, at most
// until the process exits.
func (pio *processIO) terminalEOF() error {
	if !pio.stopInput() {
		return nil
	}
	pio.stdinMu.Lock()
	last := pio.lastIn
	pio.stdinMu.Unlock()
	pio.mu.Lock()
	master, closed := pio.masterIO, pio.closed
	pio.mu.Unlock()
	if master == nil || closed {
		return nil // the process is gone with its terminal
	}
	eof := byte(4) // ^D, unless the terminal says otherwise
	if rc, err := master.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS); err == nil && t.Cc[unix.VEOF] != 0 {
				eof = t.Cc[unix.VEOF]
			}
		})
	}
	seq := []byte{eof}
	if last != 0 && last != '\n' {
		seq = append(seq, eof)
	}
	if _, err := master.Write(seq); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("type EOF into the terminal: %w", err)
	}
	return nil
}

// wait waits, after the process has exited, until its output has been
// copied. When timeout passes first it closes the read ends, which ends the
// copies, and reports ErrDrainTimeout. Either way every fd is closed after.
func (pio *processIO) wait(timeout time.Duration) error {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	// A terminal's master reads EIO once every slave fd is gone, which is
	// exactly when the process and its children have exited.
	var err error
	select {
	case <-pio.drained:
	case <-expired:
		// Closing our ends ends a copy waiting to read. A copy inside the
		// caller's Write can not be interrupted: as os/exec's WaitDelay, do
		// not wait for it. Its next read fails on the closed end, so it
		// ends once that Write returns, and writes nothing more.
		err = ErrDrainTimeout
		for _, f := range pio.readEnd {
			f.Close()
		}
		pio.mu.Lock()
		if pio.masterIO != nil {
			pio.masterIO.Close()
		}
		pio.mu.Unlock()
		// A logger still reading (a daemonised child holds its pipe, or it
		// does not exit at EOF) is ended and reaped.
		pio.stopLoggers()
	}
	pio.release()
	pio.errMu.Lock()
	cerr := pio.copyErr
	pio.errMu.Unlock()
	if cerr != nil {
		err = errors.Join(cerr, err) // err may be nil
	}
	return err
}

// release closes whatever is still open and ends any logger still running.
// Safe to call more than once.
func (pio *processIO) release() {
	pio.mu.Lock()
	if pio.closed {
		pio.mu.Unlock()
		return
	}
	pio.closed = true
	if pio.master != nil {
		pio.masterIO.Close()
		pio.master.Close()
	}
	for _, c := range pio.host {
		c.Close() // some were closed already by their copy loop
	}
	pio.mu.Unlock()
	pio.stopLoggers() // outside the lock: it may wait for a logger to exit
}
