// Package runckit manages OCI containers and their processes from inside
// your own program: a custom orchestrator, a test harness, a containerd
// shim. It drives a real runc, watches and reaps every process it starts
// itself, and hands you each container's lifecycle as an ordered stream of
// events. There is no daemon.
//
// # The main flow
//
// NewContainer runs runc create on an OCI bundle: init exists but has not
// started the program yet. Start runs it. Exec reserves an exec process
// with an ID and a process spec; its Start runs runc exec. Process.Wait
// returns the exit status once the process's output has been copied;
// Container.Wait returns init's. Kill and Stop signal, Delete removes the
// container (Process.Delete frees an exec's ID):
//
//	c, err := runckit.NewContainer(ctx, "web", bundleDir,
//		runckit.WithEventSink(sink), runckit.WithStdio(runckit.Stdio{Stdout: os.Stdout}))
//	err = c.Start(ctx)
//	spec, err := c.ProcessSpec("uname", "-a") // the container's env, user, cwd...
//	p, err := c.Exec(ctx, "probe", spec, runckit.Stdio{Stdout: &buf})
//	err = p.Start(ctx)
//	st, err := p.Wait(ctx)
//	st, err = c.Stop(ctx, 10*time.Second)
//	err = c.Delete(ctx)
//
// For the common case, Container.Command works like os/exec: it runs a
// command with the container's own process settings and cleans up after it:
//
//	out, err := c.Command("cat", "/etc/hostname").Output(ctx)
//
// # Ordering guarantees
//
// Events (WithEventSink) are delivered to the sink one at a time per
// container, in order, and a slow sink blocks nothing. For every container:
// create comes first and delete last; a process's start comes before its
// exit, however quickly it exits; every exec's exit comes before init's,
// and once init has exited no new exec starts; no exit is lost, repeated or
// given to another process, even when the kernel reuses a pid. No lock is
// held across a runc call, so operations on different processes run in
// parallel.
//
// # Effects on the whole program
//
// The default ExitWatcher makes the program a child subreaper, installs a
// SIGCHLD handler and starts a reaper goroutine that lives as long as the
// program. It reaps each watched process through its pidfd and never calls
// wait(-1), so the program's own exec.Command children keep working; of
// the other orphans it inherits, it reaps only runc's leftover helpers and
// processes of its own containers' PID namespaces. A program dedicated to
// containers (a shim) uses NewReapingExitWatcher, which reaps every orphan.
//
// # Contexts
//
// A context bounds how long the caller waits, never what runckit leaves
// behind: when it ends during a runc call, runckit finishes or undoes that
// call (runtime state, pid files, helper processes, the process it started)
// before it returns, and the error wraps ctx.Err().
//
// # Errors
//
// Errors wrap the kinds of github.com/containerd/errdefs, so callers test
// them with errdefs.IsNotFound, errdefs.IsAlreadyExists,
// errdefs.IsInvalidArgument, errdefs.IsFailedPrecondition and so on, and
// their messages name the container, the process and what runc said. Bad
// input is refused before anything changes. A command that exits
// unsuccessfully under Cmd returns an *ExitError.
package runckit
