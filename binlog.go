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
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Logging binaries (containerd's "binary://" stdio URIs).
//
// A StdoutPath or StderrPath of the form binary:///path/to/logger?key=value
// runs /path/to/logger for the process's output, with containerd's
// protocol for shim loggers:
//
//   - its arguments are the query's keys and values as pairs, keys sorted
//     (containerd builds the query from a map, so order carries nothing);
//   - its environment is exactly CONTAINER_ID (Stdio.LogID, by default the
//     container's ID, for init and execs alike) and CONTAINER_NAMESPACE
//     (Stdio.LogNamespace, empty unless set: runckit has no namespaces of
//     its own);
//   - fd 3 reads the process's stdout and fd 4 its stderr; a stream that
//     does not go to this logger reads /dev/null there;
//   - fd 5 is a pipe the logger closes, or writes a byte to, when it is
//     ready. binary-v2:// URIs require the byte, as containerd's do.
//
// The same URI (same path and query) for stdout and stderr starts one
// logger, which gets both; two different URIs start two. The logger's own
// stdin, stdout and stderr are /dev/null, and it runs in a process group of
// its own, so that its children can be ended with it.
//
// The logger is started, and waited for until ready, before runc creates
// or execs the process, bounded by the context of that call. Errors then:
//   - the binary does not exist: errdefs.ErrNotFound;
//   - it exists but can not be executed (no permission, not an executable,
//     a directory): errdefs.ErrInvalidArgument;
//   - it exits, or closes fd 5 without the byte binary-v2 needs, before it
//     is ready: errdefs.ErrUnavailable, with its exit status;
//   - the context ends first: the context's error.
//
// Nothing is left after such an error: the logger is waited for (killed
// first if it still runs) and every pipe is closed.
//
// Once the process runs, the logger gets EOF when the process and every
// child holding its output have closed it, and is expected to exit by
// itself; Wait returns after it has. The drain timeout (WithDrainTimeout)
// bounds that wait as it bounds the copy of output into writers: past it,
// the logger's process group gets SIGTERM, then SIGKILL loggerTermGrace
// later, and Wait returns ErrDrainTimeout once the logger is reaped. When
// runc fails to create or exec the process, the logger is ended the same
// way at once. The logger's own exit status after it was ready is not
// reported.

// loggerTermGrace is how long a logger has to exit after SIGTERM before it
// is killed.
const loggerTermGrace = 2 * time.Second

// binaryLogger is one running logging binary.
type binaryLogger struct {
	uri string
	cmd *exec.Cmd
	pid int

	mu        sync.Mutex // guards the two below, so that a signal never outlives the group
	exited    bool       // the logger is a zombie or reaped: its group may be gone
	killGroup bool       // stop ends the logger: end what is left of its group with it

	done chan struct{} // closed once the logger has been reaped
}

// parseLoggerURI reports whether raw is a binary:// or binary-v2:// URI
// and, if so, checks that it names an absolute path on this host.
func parseLoggerURI(name, raw string) (*url.URL, bool, error) {
	scheme, _, ok := strings.Cut(raw, ":")
	if !ok {
		return nil, false, nil
	}
	scheme = strings.ToLower(scheme)
	if scheme != "binary" && scheme != "binary-v2" {
		return nil, false, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, true, fmt.Errorf("runckit: %s %q: %v: %w", name, raw, err, errdefs.ErrInvalidArgument)
	}
	if u.Opaque != "" || u.Host != "" || u.Path == "" || u.Path[0] != '/' {
		return nil, true, fmt.Errorf("runckit: %s %q: want %s:///absolute/path/to/logger[?key=value...]: %w",
			name, raw, scheme, errdefs.ErrInvalidArgument)
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil {
		return nil, true, fmt.Errorf("runckit: %s %q: query: %v: %w", name, raw, err, errdefs.ErrInvalidArgument)
	}
	return u, true, nil
}

// checkLoggerBinary refuses, early (when the Stdio is given, before any
// process is made), a logger that does not exist or can not be run. The
// start checks again, for what changes meanwhile.
func checkLoggerBinary(name string, u *url.URL) error {
	fi, err := os.Stat(u.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("runckit: %s: logger %s: %w", name, u.Path, errdefs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("runckit: %s: logger: %v: %w", name, err, errdefs.ErrInvalidArgument)
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("runckit: %s: logger %s is not an executable file (%v): %w", name, u.Path, fi.Mode(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// loggerKey tells whether two URIs name the same logger: same scheme, path
// and query, whatever the order of the query's keys.
func loggerKey(u *url.URL) string {
	return u.Scheme + "://" + path.Clean(u.Path) + "?" + u.Query().Encode()
}

// loggerArgs turns the URI's query into arguments: key, value pairs with
// the keys sorted.
func loggerArgs(u *url.URL) []string {
	q := u.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var args []string
	for _, k := range keys {
		for _, v := range q[k] {
			args = append(args, k, v)
		}
	}
	return args
}

// startBinaryLogger starts the logger u names, with stdout and stderr (nil:
// /dev/null) as its fds 3 and 4, and waits until it is ready. On error
// nothing of it is left; the caller still owns stdout and stderr.
func startBinaryLogger(ctx context.Context, u *url.URL, containerID, namespace string, stdout, stderr *os.File) (_ *binaryLogger, err error) {
	raw := u.String()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("runckit: logger %s: not started: %w", raw, context.Cause(ctx))
	}
	var null *os.File
	for _, f := range []**os.File{&stdout, &stderr} {
		if *f != nil {
			continue
		}
		if null == nil {
			if null, err = openNull(os.O_RDONLY); err != nil {
				return nil, err
			}
			defer null.Close()
		}
		*f = null
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("runckit: logger %s: pipe: %w", raw, err)
	}
	defer readyR.Close()
	cmd := &exec.Cmd{
		Path:        path.Clean(u.Path),
		Args:        append([]string{path.Clean(u.Path)}, loggerArgs(u)...),
		Env:         []string{"CONTAINER_ID=" + containerID, "CONTAINER_NAMESPACE=" + namespace},
		ExtraFiles:  []*os.File{stdout, stderr, readyW},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err = cmd.Start()
	readyW.Close() // the logger's copy is the only writer left
	if err != nil {
		var kind error = errdefs.ErrInvalidArgument
		if errors.Is(err, fs.ErrNotExist) {
			kind = errdefs.ErrNotFound
		}
		return nil, fmt.Errorf("runckit: logger %s: %v: %w", raw, err, kind)
	}
	l := &binaryLogger{uri: raw, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go l.reap()
	defer func() {
		if err != nil {
			l.stop(0)
		}
	}()

	// A read on the pipe wakes when the logger writes a byte, closes its
	// end, or exits (which closes it too); the context's end interrupts it.
	stopAfter := context.AfterFunc(ctx, func() { readyR.SetReadDeadline(time.Now()) })
	var b [1]byte
	n, rerr := readyR.Read(b[:])
	stopAfter()
	switch {
	case n == 1:
		return l, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("runckit: logger %s: not ready: %w", raw, context.Cause(ctx))
	case rerr != nil && rerr != io.EOF:
		return nil, fmt.Errorf("runckit: logger %s: read its ready pipe: %w", raw, rerr)
	case l.exiting():
		return nil, fmt.Errorf("runckit: logger %s exited before it was ready%s: %w", raw, l.exitNote(), errdefs.ErrUnavailable)
	case u.Scheme == "binary-v2":
		return nil, fmt.Errorf("runckit: logger %s closed its ready pipe (fd 5) without writing to it: %w", raw, errdefs.ErrUnavailable)
	}
	return l, nil // closed its end and runs on: ready, as containerd reads it
}

// exiting reports whether the logger has begun to exit. Exiting closes its
// fds after the kernel marks it PF_EXITING, so a ready pipe at EOF with the
// logger not marked was closed by the logger itself.
func (l *binaryLogger) exiting() bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(l.pid) + "/stat")
	if err != nil {
		return true // reaped already (can not be: we wait for it) or gone
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return true
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 7 {
		return true
	}
	if f[0] == "Z" || f[0] == "X" {
		return true
	}
	const pfExiting = 0x4
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&pfExiting != 0
}

// exitNote waits, briefly, for a logger that is exiting, and describes
// how it ended.
func (l *binaryLogger) exitNote() string {
	select {
	case <-l.done:
	case <-time.After(loggerTermGrace):
		return ""
	}
	if st := l.cmd.ProcessState; st != nil {
		return " (" + st.String() + ")"
	}
	return ""
}

// reap waits for the logger to exit and reaps it. It marks the logger
// exited before reaping, so signal never reaches a process group whose
// leader's pid may have been reused.
func (l *binaryLogger) reap() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, l.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	l.mu.Lock()
	if l.killGroup {
		// The leader is a zombie, so its pid, the group's id, is not
		// reused yet: what the logger left running dies with it.
		unix.Kill(-l.pid, unix.SIGKILL)
	}
	l.exited = true
	l.mu.Unlock()
	l.cmd.Wait() // the exit status is not reported: see above
	close(l.done)
}

// signal sends sig to the logger's process group while its leader is not
// reaped, so the group id is still the logger's.
func (l *binaryLogger) signal(sig syscall.Signal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.exited {
		unix.Kill(-l.pid, sig)
	}
}

// stop waits up to grace for the logger to exit by itself, then sends its
// group SIGTERM and, loggerTermGrace later, SIGKILL; what is left of the
// group when the logger exits is killed. It returns once the logger is
// reaped, and reports whether it had to signal.
func (l *binaryLogger) stop(grace time.Duration) bool {
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-l.done:
		case <-t.C:
		}
		t.Stop()
	}
	select {
	case <-l.done:
		return false
	default:
	}
	l.mu.Lock()
	l.killGroup = true
	l.mu.Unlock()
	l.signal(syscall.SIGTERM)
	t := time.NewTimer(loggerTermGrace)
	defer t.Stop()
	select {
	case <-l.done:
	case <-t.C:
		l.signal(syscall.SIGKILL)
		<-l.done
	}
	return true
}

// setupLoggers starts the logging binaries that StdoutPath and StderrPath
// name, one per distinct URI, and gives the process the write ends of their
// pipes. It returns once every logger is ready; on error the caller's abort
// closes the ends and ends the loggers already started.
func (pio *processIO) setupLoggers(ctx context.Context, s Stdio, containerID string, uid, gid int) error {
	type stream struct {
		u    *url.URL
		key  string
		read *os.File // the logger's end, ours until it is started
	}
	var streams [3]*stream
	defer func() {
		for _, st := range streams {
			if st != nil && st.read != nil {
				st.read.Close()
			}
		}
	}()
	for fd, p := range map[int]struct{ name, raw string }{1: {"StdoutPath", s.StdoutPath}, 2: {"StderrPath", s.StderrPath}} {
		u, ok, err := parseLoggerURI(p.name, p.raw)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		r, w, err := newPipe(uid, gid)
		if err != nil {
			return err
		}
		pio.child[fd] = w
		streams[fd] = &stream{u: u, key: loggerKey(u), read: r}
	}
	for fd := 1; fd <= 2; fd++ {
		st := streams[fd]
		if st == nil || st.read == nil {
			continue // none, or handed to the logger of stdout
		}
		var ends [3]*os.File
		ends[fd] = st.read
		if fd == 1 && streams[2] != nil && streams[2].key == st.key {
			ends[2] = streams[2].read
		}
		l, err := startBinaryLogger(ctx, st.u, containerID, s.LogNamespace, ends[1], ends[2])
		for i, f := range ends {
			if f != nil {
				f.Close() // the logger has its own copy, or failed
				streams[i].read = nil
			}
		}
		if err != nil {
			return err
		}
		pio.loggers = append(pio.loggers, l)
		pio.copiers = append(pio.copiers, func() { <-l.done })
	}
	return nil
}

// stopLoggers ends the loggers that still run and waits until they are
// reaped. Safe to call more than once.
func (pio *processIO) stopLoggers() {
	for _, l := range pio.loggers {
		l.stop(0)
	}
}
