package runckit

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// This file is the container's and the process's lifecycle, written once:
// the states, the moves between them, and which operation may run in which
// state. Every operation asks one guard (checkLocked or
// checkProcessLocked) before it does anything; a refused operation changes
// nothing.
//
// A container's state is derived from a few fields that the ordering code
// needs separately (init's process state, the freeze state, whether init's
// exit was seen, whether a delete is under way), in containerStateLocked.
// The moves, and the code that makes each:
//
//	(none)   --NewContainer: runc create-->            created
//	created  --Start: runc start begins-->             starting
//	starting --runc start ok-->                        running
//	starting --runc start failed-->                    created
//	running  --Pause: runc pause begins-->             pausing  --ok--> paused   (failed: running)
//	paused   --Resume: runc resume begins-->           resuming --ok--> running  (failed: paused)
//	any live --init reaped, no exec running (exits.go)--> stopped
//	any live --init reaped, execs starting or running-->  exiting --last exec done--> stopped
//	any      --Delete: runc delete begins-->           deleting --ok--> deleted  (failed: as before)
//
// Restore and LoadContainer enter at created, running, paused or stopped:
// the state that runc and the record agree on.

// containerState is where a container is in its life.
type containerState int

const (
	ctrCreated  containerState = iota // init made by runc create, not started
	ctrStarting                       // runc start is running
	ctrRunning                        // init runs the user's program
	ctrPausing                        // runc pause is running
	ctrPaused                         // frozen
	ctrResuming                       // runc resume is running
	ctrExiting                        // init has exited; its exit event waits for execs (DESIGN.md rule 2)
	ctrStopped                        // init has exited and its exit event is out
	ctrDeleting                       // runc delete is running
	ctrDeleted                        // gone; every operation but Wait is NotFound
	numContainerStates
)

func (s containerState) String() string {
	return [...]string{"created", "starting", "running", "pausing", "paused", "resuming",
		"exiting", "stopped", "being deleted", "deleted"}[s]
}

// containerStateLocked derives the container's state; c.mu is held.
func (c *Container) containerStateLocked() containerState {
	switch {
	case c.deleted:
		return ctrDeleted
	case c.deleting:
		return ctrDeleting
	case c.initExited && c.initPending:
		return ctrExiting
	case c.initExited:
		return ctrStopped
	case c.init.state == stateCreated:
		return ctrCreated
	case c.init.state == stateStarting:
		return ctrStarting
	}
	switch c.freeze {
	case freezing:
		return ctrPausing
	case frozen:
		return ctrPaused
	case thawing:
		return ctrResuming
	}
	return ctrRunning
}

// operation is a container operation, for the guard.
type operation int

const (
	opStart       operation = iota // Container.Start
	opExec                         // Container.Exec: reserve an exec
	opExecStart                    // Process.Start of an exec
	opKill                         // Container.Kill, Process.Kill of init
	opPause                        // Container.Pause
	opResume                       // Container.Resume
	opUpdate                       // Container.Update
	opPids                         // Container.Pids
	opStats                        // Container.Stats
	opCheckpoint                   // Container.Checkpoint
	opStop                         // Container.Stop
	opWait                         // Container.Wait, Process.Wait of init
	opDelete                       // Container.Delete without DeleteForce
	opForceDelete                  // Container.Delete with DeleteForce
	opState                        // Container.State
	opExecProcess                  // Process.Kill/Delete/CloseStdin/Resize of an exec
	numOperations
)

func (op operation) String() string {
	return [...]string{"start", "exec", "start exec", "kill", "pause", "resume", "update", "list processes of",
		"read stats of", "checkpoint", "stop", "wait for", "delete", "force-delete", "read state of",
		"signal or delete an exec of"}[op]
}

// verdict is the table's answer for one (operation, state) pair.
type verdict uint8

const (
	no   verdict = iota // ErrFailedPrecondition: not in this state
	ok                  // allowed
	gone                // ErrNotFound: the container has been deleted
)

// lifecycle says which operation may run in which state. Columns are the
// states in containerState order.
//
// In exiting, an exec may still be reserved (its start fails, rule 2), as
// containerd's client does while init's exit is not out: until then the
// container has not ended for its callers. Otherwise exiting is stopped.
var lifecycle = [numOperations][numContainerStates]verdict{
	//              created starting running pausing paused resuming exiting stopped deleting deleted
	opStart:       {ok, no, no, no, no, no, no, no, no, gone},
	opExec:        {ok, ok, ok, no, no, no, ok, no, no, gone},
	opExecStart:   {ok, ok, ok, no, no, no, no, no, no, gone},
	opKill:        {ok, ok, ok, ok, ok, ok, no, no, no, gone},
	opPause:       {no, no, ok, no, no, no, no, no, no, gone},
	opResume:      {no, no, no, no, ok, no, no, no, no, gone},
	opUpdate:      {ok, ok, ok, ok, ok, ok, no, no, no, gone},
	opPids:        {ok, ok, ok, ok, ok, ok, ok, ok, no, gone},
	opStats:       {ok, ok, ok, ok, ok, ok, no, no, no, gone},
	opCheckpoint:  {no, no, ok, no, ok, no, no, no, no, gone},
	opStop:        {ok, ok, ok, no, ok, no, ok, ok, no, gone},
	opWait:        {ok, ok, ok, ok, ok, ok, ok, ok, ok, ok},
	opDelete:      {ok, no, no, no, no, no, ok, ok, no, gone},
	opForceDelete: {ok, ok, ok, ok, ok, ok, ok, ok, no, gone},
	opState:       {ok, ok, ok, ok, ok, ok, ok, ok, ok, gone},
	opExecProcess: {ok, ok, ok, ok, ok, ok, ok, ok, ok, gone},
}

// checkLocked is the one guard every container operation asks. c.mu is
// held. The error names the container, the operation and the state, with
// the errdefs kind the table gives.
func (c *Container) checkLocked(op operation) error {
	st := c.containerStateLocked()
	switch lifecycle[op][st] {
	case ok:
		return nil
	case gone:
		return errDeleted(c.id)
	}
	hint := ""
	switch {
	case op == opDelete && st != ctrDeleting:
		hint = "; stop it or use DeleteForce"
	case op == opExec || op == opExecStart:
		if st == ctrStopped || st == ctrExiting {
			hint = "; init has exited"
		}
	}
	return fmt.Errorf("runckit: %s container %q: container is %s%s: %w", op, c.id, st, hint, errdefs.ErrFailedPrecondition)
}

// Processes: an exec's own moves, made in process.go and exits.go.
//
//	created  --Process.Start: runc exec begins--> starting
//	starting --runc exec ok-->                    running
//	starting --runc exec failed or cancelled-->   created (the ID may be started again)
//	running  --reaped-->                          exited
//	created, exited --Process.Delete-->           deleted (the ID is free)
//	created  --its container deleted-->           deleted
//
// Wait is allowed in every state but deleted: on a created exec it blocks
// until the exec leaves created (leftCreated), as containerd's client
// waits before it starts an exec.
//
// Init moves through created, starting, running and exited with its
// container; it is deleted with it.

// processOp is an operation on one exec process.
type processOp int

const (
	pStart processOp = iota
	pWait
	pKill
	pDelete
	pIO // CloseStdin, Resize
	numProcessOps
)

func (op processOp) String() string {
	return [...]string{"start", "wait for", "kill", "delete", "use the stdio of"}[op]
}

// processLifecycle says which operation may run on an exec in which of its
// states. Columns are the states in processState order.
var processLifecycle = [numProcessOps][numProcessStates]verdict{
	//       created starting running exited deleted
	pStart:  {ok, no, no, no, gone},
	pWait:   {ok, ok, ok, ok, gone}, // created: Wait blocks until a start begins or it is deleted
	pKill:   {no, no, ok, no, gone},
	pDelete: {ok, no, no, ok, gone},
	pIO:     {no, ok, ok, ok, gone},
}

// checkProcessLocked is the guard of operations on an exec process: the
// container must allow containerOp, then the process must allow op. c.mu is
// held.
func (p *Process) checkProcessLocked(containerOp operation, op processOp) error {
	if err := p.c.checkLocked(containerOp); err != nil {
		return err
	}
	switch processLifecycle[op][p.state] {
	case ok:
		return nil
	case gone:
		return fmt.Errorf("runckit: %s %s: it has been deleted: %w", op, p.name(), errdefs.ErrNotFound)
	}
	return fmt.Errorf("runckit: %s %s: process is %s: %w", op, p.name(), p.state, errdefs.ErrFailedPrecondition)
}
