package runckit

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestRuntimeErrorMessageFromGoRunc runs every go-runc call runckit makes
// against a container real runc does not know, and checks that
// newRuntimeError takes runc's own words ("container does not exist") as
// its message, with ErrNotFound, and says them once. Unfixed, the message
// was empty for all of them: go-runc v1.2.1 reports "<path> did not
// terminate successfully: exit status 1: <runc's words>", and the parser
// wanted text starting with "exit status".
func TestRuntimeErrorMessageFromGoRunc(t *testing.T) {
	path, err := exec.LookPath("runc")
	if err != nil {
		t.Skipf("runc not installed: %v", err)
	}
	ctx := context.Background()
	r := &runc.Runc{Command: path, Root: t.TempDir()}
	const id = "rbe-no-such-container"
	const words = "container does not exist"
	calls := map[string]func() error{
		"start":  func() error { return r.Start(ctx, id) },
		"kill":   func() error { return r.Kill(ctx, id, 15, &runc.KillOpts{}) },
		"delete": func() error { return r.Delete(ctx, id, &runc.DeleteOpts{}) },
		"pause":  func() error { return r.Pause(ctx, id) },
		"resume": func() error { return r.Resume(ctx, id) },
		"update": func() error { return r.Update(ctx, id, &specs.LinuxResources{}) },
		"ps":     func() error { _, err := r.Ps(ctx, id); return err },
		"state":  func() error { _, err := r.State(ctx, id); return err },
		"checkpoint": func() error {
			return r.Checkpoint(ctx, id, &runc.CheckpointOpts{ImagePath: t.TempDir()})
		},
	}
	for step, call := range calls {
		gerr := call()
		if gerr == nil {
			t.Errorf("%s of an unknown container succeeded", step)
			continue
		}
		err := newRuntimeError(ctx, step, id, "", "", gerr)
		var re *runtimeError
		if !errors.As(err, &re) {
			t.Fatalf("%s: newRuntimeError returned %T", step, err)
		}
		if re.Message != words {
			t.Errorf("%s: Message = %q, want %q (go-runc said %q)", step, re.Message, words, gerr)
		}
		if !errdefs.IsNotFound(err) {
			t.Errorf("%s: %v is not ErrNotFound", step, err)
		}
		if n := strings.Count(err.Error(), words); n != 1 {
			t.Errorf("%s: %q says runc's words %d times, want once", step, err, n)
		}
		if !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("%s: %q does not say runc's exit status", step, err)
		}
	}
}

// TestRuncOutputMessageForms covers the shapes go-runc gives runc's output
// in, including the older bare "exit status N: ..." one.
func TestRuncOutputMessageForms(t *testing.T) {
	for _, tc := range []struct {
		err  string
		want string
	}{
		{"exit status 1: container not running\n", "container not running"},
		{"/usr/sbin/runc did not terminate successfully: exit status 1: container not running\n", "container not running"},
		{"/usr/sbin/runc did not terminate successfully: exit status 255: exec failed: container does not exist\n", "exec failed: container does not exist"},
		{"/usr/sbin/runc did not terminate successfully: exit status 1: criu failed: type NOTIFY errno 0\nlog file: /x/dump.log\n",
			"criu failed: type NOTIFY errno 0; log file: /x/dump.log"},
		{"/usr/sbin/runc did not terminate successfully: exit status 1: ", ""},
		{"/usr/sbin/runc did not terminate successfully: exit status 1", ""},
		{"fork/exec /nope: no such file or directory", ""},
	} {
		if got := runcOutputMessage(tc.err); got != tc.want {
			t.Errorf("runcOutputMessage(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
