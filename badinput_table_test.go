package runckit_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// errKinds maps the kinds the table expects to their errdefs checks and
// sentinels: both must agree.
var errKinds = map[string]struct {
	is       func(error) bool
	sentinel error
}{
	"InvalidArgument":    {errdefs.IsInvalidArgument, errdefs.ErrInvalidArgument},
	"NotFound":           {errdefs.IsNotFound, errdefs.ErrNotFound},
	"AlreadyExists":      {errdefs.IsAlreadyExists, errdefs.ErrAlreadyExists},
	"FailedPrecondition": {errdefs.IsFailedPrecondition, errdefs.ErrFailedPrecondition},
	"NotImplemented":     {errdefs.IsNotImplemented, errdefs.ErrNotImplemented},
	"Unavailable":        {errdefs.IsUnavailable, errdefs.ErrUnavailable},
}

// badFixture is what the table's cases run against: a runtime root for
// containers that must never be made, and a running container with a
// running exec and a reserved one, in a root of their own.
type badFixture struct {
	ctx     context.Context
	root    string
	running *runckit.Container
	exec    *runckit.Process // running: sleep
	idle    *runckit.Process // reserved, never started
}

// bundleSetup prepares a bundle directory before NewContainer.
type bundleSetup func(t *testing.T, dir string)

func withConfig(args ...string) bundleSetup {
	return func(t *testing.T, dir string) {
		if err := runckittest.WriteBundle(dir, runckittest.Spec(t, args...)); err != nil {
			t.Fatal(err)
		}
	}
}

func withRawConfig(data string) bundleSetup {
	return func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func withSpecEdit(edit func(*specs.Spec)) bundleSetup {
	return func(t *testing.T, dir string) {
		spec := runckittest.Spec(t, "true")
		edit(spec)
		if err := runckittest.WriteBundle(dir, spec); err != nil {
			t.Fatal(err)
		}
	}
}

func withDirs(setup bundleSetup, dirs ...string) bundleSetup {
	return func(t *testing.T, dir string) {
		if setup != nil {
			setup(t, dir)
		}
		for _, d := range dirs {
			if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// newContainerIn runs NewContainer for id on a fresh bundle made by setup,
// with the fixture's runtime root, and checks that the failure changed
// nothing in the bundle and left no mount under it. A container that gets
// made anyway is deleted.
func (f *badFixture) newContainerIn(t *testing.T, id string, setup bundleSetup, opts ...runckit.Option) error {
	t.Helper()
	dir := t.TempDir()
	if setup != nil {
		setup(t, dir)
	}
	before := snapshotDir(t, dir)
	c, err := runckit.NewContainer(f.ctx, id, dir, append([]runckit.Option{runckit.WithRuntimeRoot(f.root)}, opts...)...)
	if err == nil {
		if derr := c.Delete(f.ctx, runckit.DeleteForce()); derr != nil {
			t.Errorf("deleting the container made by mistake: %v", derr)
		}
		return nil
	}
	if after := snapshotDir(t, dir); after != before {
		t.Errorf("bundle changed by a failed NewContainer:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, m := range mountsUnder(dir) {
		t.Errorf("mount left under the bundle: %s", m)
	}
	return err
}

// newContainer is newContainerIn with a valid bundle running true.
func (f *badFixture) newContainer(t *testing.T, id string, opts ...runckit.Option) error {
	t.Helper()
	return f.newContainerIn(t, id, withConfig("true"), opts...)
}

// exec reserves an exec in the running container; a reservation that
// succeeds by mistake is deleted again.
func (f *badFixture) execIn(id string, spec *specs.Process, stdio runckit.Stdio) error {
	p, err := f.running.Exec(f.ctx, id, spec, stdio)
	if err == nil {
		p.Delete(f.ctx)
	}
	return err
}

// snapshotDir describes every entry under dir: path, type, mode, size and
// a hash of the content.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %d %x", len(data), sha256.Sum256(data))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// TestBadInputTable is the catalogue of inputs runckit refuses, with the
// errdefs kind of each refusal. Every refusal must leave nothing behind:
// no runtime state, no change to the bundle, no mount.
func TestBadInputTable(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	f := &badFixture{ctx: ctx, root: runckittest.RuntimeRoot(t)}
	f.running = e.sleeper(ctx)
	var err error
	if f.exec, err = f.running.Exec(ctx, "running", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := f.exec.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if f.idle, err = f.running.Exec(ctx, "idle", runckittest.ProcessSpec("true"), runckit.Stdio{}); err != nil {
		t.Fatal(err)
	}
	notExecutable := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := runckittest.ProcessSpec
	spec := func(args ...string) *specs.Spec { return runckittest.Spec(t, args...) }

	cases := []struct {
		name string
		kind string
		run  func(t *testing.T) error
	}{
		// Container IDs.
		{"id/empty", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "") }},
		{"id/77-chars", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, strings.Repeat("a", 77)) }},
		{"id/slash", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a/b") }},
		{"id/dot-dot", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "..") }},
		{"id/leading-separator", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "-a") }},
		{"id/trailing-separator", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a.") }},
		{"id/double-separator", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a._b") }},
		{"id/space", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a b") }},
		{"id/nul", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a\x00b") }},
		{"id/newline", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "a\nb") }},
		{"id/non-ascii", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "café") }},
		{"id/duplicate", "AlreadyExists", func(t *testing.T) error {
			_, err := runckit.NewContainer(ctx, f.running.ID(), runckittest.Bundle(t, spec("true")), runckit.WithRuntimeRoot(e.root))
			return err
		}},

		// Exec IDs.
		{"exec-id/empty", "InvalidArgument", func(t *testing.T) error { return f.execIn("", proc("true"), runckit.Stdio{}) }},
		{"exec-id/escape", "InvalidArgument", func(t *testing.T) error { return f.execIn("../x", proc("true"), runckit.Stdio{}) }},
		{"exec-id/77-chars", "InvalidArgument", func(t *testing.T) error {
			return f.execIn(strings.Repeat("e", 77), proc("true"), runckit.Stdio{})
		}},
		{"exec-id/duplicate", "AlreadyExists", func(t *testing.T) error { return f.execIn("idle", proc("true"), runckit.Stdio{}) }},

		// Bundles and their config.json.
		{"bundle/empty-path", "InvalidArgument", func(t *testing.T) error {
			_, err := runckit.NewContainer(ctx, "b-empty", "", runckit.WithRuntimeRoot(f.root))
			return err
		}},
		{"bundle/missing", "NotFound", func(t *testing.T) error {
			_, err := runckit.NewContainer(ctx, "b-missing", filepath.Join(t.TempDir(), "nope"), runckit.WithRuntimeRoot(f.root))
			return err
		}},
		{"bundle/is-a-file", "InvalidArgument", func(t *testing.T) error {
			file := filepath.Join(t.TempDir(), "file")
			os.WriteFile(file, nil, 0o600)
			_, err := runckit.NewContainer(ctx, "b-file", file, runckit.WithRuntimeRoot(f.root))
			return err
		}},
		{"bundle/no-config", "NotFound", func(t *testing.T) error { return f.newContainerIn(t, "b-noconfig", nil) }},
		{"bundle/config-not-json", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-notjson", withRawConfig("this is { not json"))
		}},
		{"bundle/config-is-a-directory", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-cfgdir", withDirs(nil, "config.json"))
		}},
		{"bundle/config-no-process", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-noproc", withRawConfig(`{"ociVersion":"1.0.2","root":{"path":"rootfs"}}`))
		}},
		{"bundle/config-empty-args", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-noargs", withSpecEdit(func(s *specs.Spec) { s.Process.Args = nil }))
		}},
		{"bundle/terminal-in-spec-not-stdio", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-term1", withSpecEdit(func(s *specs.Spec) { s.Process.Terminal = true }))
		}},
		{"bundle/terminal-in-stdio-not-spec", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "b-term2", withConfig("true"), runckit.WithStdio(runckit.Stdio{Terminal: true}))
		}},

		// Specs given with WithSpec: a refused one must leave config.json as it was.
		{"spec/nil", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "s-nil", runckit.WithSpec(nil)) }},
		{"spec/empty-args-restores-config", "InvalidArgument", func(t *testing.T) error {
			s := spec()
			return f.newContainer(t, "s-noargs", runckit.WithSpec(s))
		}},
		{"spec/no-process-removes-config", "InvalidArgument", func(t *testing.T) error {
			s := spec("true")
			s.Process = nil
			return f.newContainerIn(t, "s-noproc", nil, runckit.WithSpec(s))
		}},
		{"spec/terminal-mismatch", "InvalidArgument", func(t *testing.T) error {
			s := spec("true")
			s.Process.Terminal = true
			return f.newContainerIn(t, "s-term", nil, runckit.WithSpec(s))
		}},

		// Rootfs mounts.
		{"mount/absolute-target", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "m-abs", runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "/tmp/x"}))
		}},
		{"mount/target-escapes", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "m-escape", runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "../x"}))
		}},
		{"mount/target-escapes-nested", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "m-escape2", withDirs(withConfig("true"), "scratch"),
				runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "scratch/../../x"}))
		}},
		{"mount/source-missing", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "m-nosrc", withDirs(withConfig("true"), "scratch"),
				runckit.WithRootfsMounts(runckit.Mount{Source: "/no/such/source", Target: "scratch", Options: []string{"bind"}}))
		}},
		{"mount/target-missing", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "m-notarget", runckit.WithRootfsMounts(runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "nodir"}))
		}},
		{"mount/unknown-fstype", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "m-nofs", withDirs(withConfig("true"), "scratch"),
				runckit.WithRootfsMounts(runckit.Mount{Type: "nosuchfs", Source: "none", Target: "scratch"}))
		}},
		{"mount/neither-type-nor-source", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "m-empty", runckit.WithRootfsMounts(runckit.Mount{Target: "scratch"}))
		}},
		{"mount/second-fails-first-undone", "InvalidArgument", func(t *testing.T) error {
			return f.newContainerIn(t, "m-second", withDirs(withConfig("true"), "scratch"),
				runckit.WithRootfsMounts(
					runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "scratch"},
					runckit.Mount{Type: "tmpfs", Source: "tmpfs", Target: "nodir"}))
		}},

		// Options.
		{"option/nil-sink", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "o-sink", runckit.WithEventSink(nil)) }},
		{"option/empty-runtime", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "o-rt", runckit.WithRuntime("")) }},
		{"option/empty-root", "InvalidArgument", func(t *testing.T) error { return f.newContainer(t, "o-root", runckit.WithRuntimeRoot("")) }},
		{"option/negative-drain-timeout", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "o-drain", runckit.WithDrainTimeout(-time.Nanosecond))
		}},
		{"option/negative-io-uid", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "o-uid", runckit.WithRuntimeOptions(runckit.RuntimeOptions{IOUid: -1}))
		}},
		{"option/negative-io-gid", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "o-gid", runckit.WithRuntimeOptions(runckit.RuntimeOptions{IOGid: -5}))
		}},
		{"option/nil-exit-watcher", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "o-watcher", runckit.WithExitWatcher(nil))
		}},
		{"option/runtime-not-found", "Unavailable", func(t *testing.T) error {
			return f.newContainer(t, "o-norunc", runckit.WithRuntime("no-such-runc"))
		}},
		{"option/runtime-not-executable", "Unavailable", func(t *testing.T) error {
			return f.newContainer(t, "o-noexec", runckit.WithRuntime(notExecutable))
		}},

		// Stdio paths and URIs, for init and for an exec.
		{"stdio/unknown-scheme", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-http", runckit.WithStdio(runckit.Stdio{StdoutPath: "http:///x"}))
		}},
		{"stdio/fifo-with-host", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-host", runckit.WithStdio(runckit.Stdio{StdoutPath: "fifo://host/x"}))
		}},
		{"stdio/fifo-relative", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-rel", runckit.WithStdio(runckit.Stdio{StderrPath: "fifo:relative/x"}))
		}},
		{"stdio/bad-escape", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-esc", runckit.WithStdio(runckit.Stdio{StdinPath: "%zz"}))
		}},
		{"stdio/binary-uri-missing", "NotFound", func(t *testing.T) error {
			return f.newContainer(t, "io-bin", runckit.WithStdio(runckit.Stdio{StdoutPath: "binary:///no/such/logger"}))
		}},
		{"stdio/binary-uri-stdin", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-binin", runckit.WithStdio(runckit.Stdio{StdinPath: "binary:///bin/true"}))
		}},
		{"stdio/binary-uri-host", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-binhost", runckit.WithStdio(runckit.Stdio{StdoutPath: "binary://host/bin/true"}))
		}},
		{"stdio/reader-and-path", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-both", runckit.WithStdio(runckit.Stdio{Stdin: strings.NewReader(""), StdinPath: "/dev/null"}))
		}},
		{"stdio/terminal-with-stderr", "InvalidArgument", func(t *testing.T) error {
			return f.newContainer(t, "io-tty", runckit.WithStdio(runckit.Stdio{Terminal: true, StderrPath: "/dev/null"}))
		}},
		{"stdio/exec-binary-uri-missing", "NotFound", func(t *testing.T) error {
			return f.execIn("x-bin", proc("true"), runckit.Stdio{StderrPath: "binary:///no/such/logger?x=1"})
		}},
		{"stdio/exec-unknown-scheme", "InvalidArgument", func(t *testing.T) error {
			return f.execIn("x-ftp", proc("true"), runckit.Stdio{StdoutPath: "ftp:///x"})
		}},
		{"stdio/exec-writer-and-path", "InvalidArgument", func(t *testing.T) error {
			return f.execIn("x-both", proc("true"), runckit.Stdio{Stdout: os.Stdout, StdoutPath: "/dev/null"})
		}},

		// Signals.
		{"signal/container-0", "InvalidArgument", func(t *testing.T) error { return f.running.Kill(ctx, 0) }},
		{"signal/container-65", "InvalidArgument", func(t *testing.T) error { return f.running.Kill(ctx, 65) }},
		{"signal/container-negative", "InvalidArgument", func(t *testing.T) error { return f.running.Kill(ctx, -1) }},
		{"signal/killall-0", "InvalidArgument", func(t *testing.T) error { return f.running.Kill(ctx, 0, runckit.KillAll()) }},
		{"signal/exec-0", "InvalidArgument", func(t *testing.T) error { return f.exec.Kill(ctx, 0) }},
		{"signal/exec-65", "InvalidArgument", func(t *testing.T) error { return f.exec.Kill(ctx, 65) }},
		{"signal/exec-negative", "InvalidArgument", func(t *testing.T) error { return f.exec.Kill(ctx, syscall.Signal(-9)) }},

		// Exec process specs.
		{"exec-spec/nil", "InvalidArgument", func(t *testing.T) error { return f.execIn("x-nil", nil, runckit.Stdio{}) }},
		{"exec-spec/no-args", "InvalidArgument", func(t *testing.T) error { return f.execIn("x-noargs", proc(), runckit.Stdio{}) }},
		{"exec-spec/no-cwd", "InvalidArgument", func(t *testing.T) error {
			p := proc("true")
			p.Cwd = ""
			return f.execIn("x-nocwd", p, runckit.Stdio{})
		}},

		// Operations out of order.
		// Wait on an unstarted exec blocks until it is started or deleted
		// (waitcreated_test.go).
		{"state/kill-unstarted-exec", "FailedPrecondition", func(t *testing.T) error { return f.idle.Kill(ctx, syscall.SIGTERM) }},
		{"state/delete-running-exec", "FailedPrecondition", func(t *testing.T) error { return f.exec.Delete(ctx) }},
		{"state/start-running-exec", "FailedPrecondition", func(t *testing.T) error { return f.exec.Start(ctx) }},
		{"state/delete-running-container", "FailedPrecondition", func(t *testing.T) error { return f.running.Delete(ctx) }},
		{"state/start-running-container", "FailedPrecondition", func(t *testing.T) error { return f.running.Start(ctx) }},
		{"state/missing-exec", "NotFound", func(t *testing.T) error {
			_, err := f.running.Process("missing")
			return err
		}},
	}

	seen := make(map[string]bool)
	for _, tc := range cases {
		if seen[tc.name] {
			t.Fatalf("case %q listed twice", tc.name)
		}
		seen[tc.name] = true
		kind, ok := errKinds[tc.kind]
		if !ok {
			t.Fatalf("case %q: unknown kind %q", tc.name, tc.kind)
		}
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(t)
			switch {
			case err == nil:
				t.Errorf("accepted, want %s", tc.kind)
			case !kind.is(err) || !errors.Is(err, kind.sentinel):
				t.Errorf("error %q, want kind %s", err, tc.kind)
			}
			if entries, _ := os.ReadDir(f.root); len(entries) > 0 {
				for _, e := range entries {
					t.Errorf("runtime state left in %s: %s", f.root, e.Name())
				}
			}
		})
	}
	t.Logf("%d bad inputs refused", len(cases))

	// The refusals left the fixture working: its exec still runs and the
	// container ends cleanly with a whole event stream.
	if st := f.exec.Status(); st != runckit.StatusRunning {
		t.Errorf("running exec is %s after the table", st)
	}
	if err := f.running.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := f.running.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.running.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	exits := checkOrder(t, e.rec.Events())
	if len(exits) != 2 {
		t.Errorf("exits %v, want the running exec's and init's", exits)
	}
	if entries, _ := os.ReadDir(f.root); len(entries) != 0 {
		t.Errorf("runtime root %s holds %d entries", f.root, len(entries))
	}
}
