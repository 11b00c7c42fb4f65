package runckitshim

import (
	"github.com/runckit/runckit"
)

// openStdio turns containerd's stream paths into runckit's Stdio: runckit
// opens containerd's FIFOs and files itself, with a terminal too, and starts
// the logging binary a binary:// URI names (CONTAINER_NAMESPACE is ns, the
// request's namespace). containerd names a stderr stream for a terminal as
// well; a terminal has one output stream, so that one is dropped.
//
// A logger of an exec is told the exec's ID as CONTAINER_ID (execID; empty
// for init), as by containerd's runc shim.
func openStdio(tio taskIO, ns, execID string) runckit.Stdio {
	s := runckit.Stdio{Terminal: tio.terminal, StdinPath: tio.stdin, StdoutPath: tio.stdout, StderrPath: tio.stderr, LogNamespace: ns, LogID: execID}
	if s.Terminal {
		s.StderrPath = ""
	}
	return s
}
