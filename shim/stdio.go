package runckitshim

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"

	"github.com/runckit/runckit"
)

// openStdio turns containerd's stream paths into runckit's Stdio. Without a
// terminal runckit opens the paths itself, and starts the logging binary a
// binary:// URI names (CONTAINER_NAMESPACE is ns, the request's namespace);
// a terminal takes readers and writers, so the shim opens containerd's
// FIFOs and closes them (the returned func) once the process's output is
// drained. A terminal's output to a logging binary is not supported.
func openStdio(tio taskIO, ns string) (runckit.Stdio, func(), error) {
	if !tio.terminal {
		return runckit.Stdio{StdinPath: tio.stdin, StdoutPath: tio.stdout, StderrPath: tio.stderr, LogNamespace: ns}, func() {}, nil
	}
	if tio.stderr != "" {
		// containerd names a stderr FIFO for a terminal too; a terminal has
		// one output stream, so nothing is written there.
		tio.stderr = ""
	}
	var closers []io.Closer
	closeAll := func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}
	s := runckit.Stdio{Terminal: true}
	if tio.stdin != "" {
		path, err := fifoPath(tio.stdin)
		if err != nil {
			return s, nil, err
		}
		// O_NONBLOCK: the open does not wait for containerd's writer;
		// reads do.
		f, err := fifo.OpenFifo(context.Background(), path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return s, nil, fmt.Errorf("open stdin %s: %w", path, err)
		}
		closers = append(closers, f)
		s.Stdin = f
	}
	if tio.stdout != "" {
		path, err := fifoPath(tio.stdout)
		if err != nil {
			closeAll()
			return s, nil, err
		}
		f, err := fifo.OpenFifo(context.Background(), path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			closeAll()
			return s, nil, fmt.Errorf("open stdout %s: %w", path, err)
		}
		closers = append(closers, f)
		s.Stdout = f
	}
	return s, closeAll, nil
}

// fifoPath accepts a plain absolute path or a fifo:// URI.
func fifoPath(raw string) (string, error) {
	if p, ok := strings.CutPrefix(raw, "fifo://"); ok {
		raw = p
	}
	if !strings.HasPrefix(raw, "/") {
		return "", fmt.Errorf("terminal stream %q: want a FIFO path: %w", raw, errdefs.ErrNotImplemented)
	}
	return raw, nil
}
