package runckit

import (
	"context"
	"fmt"
	"io"
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
// For shims, a stream may instead name a path: "fifo:///run/x/stdout" opens a
// FIFO, "file:///var/log/x" appends to a file, and a plain absolute path is
// either, depending on what is there. A stream may have a reader/writer or a
// path, not both.
type Stdio struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Terminal gives the process a pseudo-terminal. Its output, stdout and
	// stderr merged as on a real terminal, goes to Stdout; Stderr must be
	// unset.
	Terminal bool

	StdinPath  string
	StdoutPath string
	StderrPath string
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
	case "binary":
		return "", false, fmt.Errorf("runckit: %s %q: binary logging URIs are not supported yet: %w", name, raw, errdefs.ErrNotImplemented)
	}
	return "", false, fmt.Errorf("runckit: %s %q: unknown scheme %q (want fifo, file or an absolute path): %w",
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
	if s.Terminal && (s.StdinPath != "" || s.StdoutPath != "") {
		return fmt.Errorf("runckit: a terminal takes Stdin and Stdout readers/writers, not paths: %w", errdefs.ErrInvalidArgument)
	}
	for _, p := range []struct{ name, v string }{{"StdinPath", s.StdinPath}, {"StdoutPath", s.StdoutPath}, {"StderrPath", s.StderrPath}} {
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
	stdinW  *os.File   // write end of the stdin pipe, for CloseStdin
}

func newProcessIO(s Stdio, uid, gid int) (pio *processIO, err error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	pio = &processIO{stdio: s, drained: make(chan struct{})}
	defer func() {
		if err != nil {
			pio.abort()
		}
	}()
	if s.Terminal {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("runckit: console socket: %w", err)
		}
		pio.socket = sock
		return pio, nil
	}
	if err := pio.setupInput(s.Stdin, s.StdinPath, uid, gid); err != nil {
		return nil, err
	}
	if err := pio.setupOutput(1, "StdoutPath", s.Stdout, s.StdoutPath, uid, gid); err != nil {
		return nil, err
	}
	if err := pio.setupOutput(2, "StderrPath", s.Stderr, s.StderrPath, uid, gid); err != nil {
		return nil, err
	}
	return pio, nil
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
			return fmt.Errorf("runckit: StdinPath: %w", err)
		}
		pio.child[0] = f
		return nil
	case p != "" && fifo:
		return pio.setupFIFOInput(p, uid, gid)
	case r == nil:
		f, err := openNull(os.O_RDONLY)
		pio.child[0] = f
		return err
	}
	if f, ok := r.(*os.File); ok {
		pio.child[0] = f
		return nil
	}
	pr, pw, err := newPipe(uid, gid)
	if err != nil {
		return err
	}
	pio.child[0] = pr
	pio.host = append(pio.host, pw)
	pio.stdinW = pw
	pio.inputs = append(pio.inputs, func() {
		io.Copy(pw, r)
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
		return fmt.Errorf("runckit: StdinPath: %w", err)
	}
	if fi.Mode()&os.ModeNamedPipe == 0 {
		return fmt.Errorf("runckit: StdinPath %q is not a FIFO: %w", path, errdefs.ErrInvalidArgument)
	}
	pr, pw, err := newPipe(uid, gid)
	if err != nil {
		return err
	}
	pio.child[0] = pr
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
			return fmt.Errorf("runckit: %s: %w", name, err)
		}
		pio.child[fd] = f
		return nil
	case p != "":
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("runckit: %s: %w", name, err)
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
	pio.child[fd] = pw
	pio.host = append(pio.host, pr)
	pio.readEnd = append(pio.readEnd, pr)
	pio.copiers = append(pio.copiers, func() {
		io.Copy(w, pr)
		pr.Close()
	})
	return nil
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
		if !pio.callerOwns(i, f) {
			f.Close()
		}
		pio.child[i] = nil
	}
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
	if w := pio.stdio.Stdout; w != nil {
		pio.copiers = append(pio.copiers, func() { io.Copy(w, master) })
	} else {
		pio.copiers = append(pio.copiers, func() { io.Copy(io.Discard, master) })
	}
	if r := pio.stdio.Stdin; r != nil {
		pio.inputs = append(pio.inputs, func() { io.Copy(master, r) })
	}
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
// reader in the process sees EOF.
func (pio *processIO) closeStdin() {
	if pio.stdinW != nil {
		pio.stdinW.Close()
	}
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
		err = ErrDrainTimeout
		for _, f := range pio.readEnd {
			f.Close()
		}
		pio.mu.Lock()
		if pio.masterIO != nil {
			pio.masterIO.Close()
		}
		pio.mu.Unlock()
		<-pio.drained
	}
	pio.release()
	return err
}

// release closes whatever is still open. Safe to call more than once.
func (pio *processIO) release() {
	pio.mu.Lock()
	defer pio.mu.Unlock()
	if pio.closed {
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
}
