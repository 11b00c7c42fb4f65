package runckitshim

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/runckit/runckit/runckittest"
)

// nopPublisher drops the shim's events: these tests call the task service
// directly, without containerd.
type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, string, events.Event) error { return nil }
func (nopPublisher) Close() error                                        { return nil }

// serviceTest is a task service built as containerd's shim main builds it,
// with runc's state under a private root.
type serviceTest struct {
	s    *service
	ns   string
	root string // the runtime root containerd would name in the options
	opts *anypb.Any
}

func newServiceTest(t *testing.T, ns string) *serviceTest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers needs root")
	}
	if err := runckittest.Check(); err != nil {
		t.Skipf("needs runc and busybox-static: %v", err)
	}
	ctx, sd := shutdown.WithShutdown(context.Background())
	svc, err := newService(ctx, nopPublisher{}, sd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sd.Shutdown()
		<-sd.Done()
	})
	root := t.TempDir()
	opts, err := typeurl.MarshalAnyToProto(&options.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	return &serviceTest{s: svc.(*service), ns: ns, root: root, opts: opts}
}

func (st *serviceTest) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), st.ns), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// create makes a container with the service, deleted when the test ends.
func (st *serviceTest) create(t *testing.T, r *taskAPI.CreateTaskRequest) {
	t.Helper()
	ctx := st.ctx(t)
	r.Options = st.opts
	if _, err := st.s.Create(ctx, r); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		st.s.Kill(ctx, &taskAPI.KillRequest{ID: r.ID, Signal: uint32(syscall.SIGKILL), All: true})
		st.s.Wait(ctx, &taskAPI.WaitRequest{ID: r.ID})
		if _, err := st.s.Delete(ctx, &taskAPI.DeleteRequest{ID: r.ID}); err != nil {
			t.Errorf("delete %s: %v", r.ID, err)
		}
	})
}

func shimLogger(t *testing.T, dir string) string {
	t.Helper()
	script := "#!" + runckittest.BusyboxPath + " sh\n" +
		"while [ $# -gt 1 ]; do eval \"arg_$1=\\$2\"; shift 2; done\n" +
		"echo \"$CONTAINER_ID $CONTAINER_NAMESPACE\" >>" + filepath.Join(dir, "calls") + "\n" +
		"exec 5>&-\ncat <&3 >\"$arg_out\" &\ncat <&4 >\"$arg_err\"\nwait\n"
	p := filepath.Join(dir, "logger")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// containerd's binary:// stdio URIs (cio.BinaryIO: one URI for stdout and
// stderr) reach runckit's logger, with a terminal too: the container's
// output is in the logger's files after Wait, and the logger got the
// request's namespace.
func TestBinaryLogThroughShimService(t *testing.T) {
	st := newServiceTest(t, "rk-binlog")
	ctx := st.ctx(t)
	dir := t.TempDir()
	bin := shimLogger(t, dir)
	out, errf := filepath.Join(dir, "out"), filepath.Join(dir, "err")
	uri := (&url.URL{Scheme: "binary", Path: bin, RawQuery: url.Values{"out": {out}, "err": {errf}}.Encode()}).String()
	id := "binlog-shim-" + time.Now().Format("150405.000")
	id = strings.ReplaceAll(id, ".", "-")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sh", "-c", "echo hello; echo oops >&2; exit 5"))
	st.create(t, &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle, Stdout: uri, Stderr: uri})
	if _, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	w, err := st.s.Wait(ctx, &taskAPI.WaitRequest{ID: id})
	if err != nil || w.ExitStatus != 5 {
		t.Fatalf("Wait = %v, %v; want exit 5", w, err)
	}
	for p, want := range map[string]string{out: "hello\n", errf: "oops\n", filepath.Join(dir, "calls"): id + " rk-binlog\n"} {
		if b, err := os.ReadFile(p); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", filepath.Base(p), b, err, want)
		}
	}

	// With a terminal (ctr run -t --log-uri binary://...): the terminal's
	// one stream goes to the logger's fd 3; the stderr URI containerd
	// also sends is not used.
	tout, terr := filepath.Join(dir, "tty.out"), filepath.Join(dir, "tty.err")
	turi := (&url.URL{Scheme: "binary", Path: bin, RawQuery: url.Values{"out": {tout}, "err": {terr}}.Encode()}).String()
	tspec := runckittest.Spec(t, "sh", "-c", "[ -t 1 ] && echo tty-hello; echo tty-oops >&2")
	tspec.Process.Terminal = true
	tid := id + "-tty"
	st.create(t, &taskAPI.CreateTaskRequest{ID: tid, Bundle: runckittest.Bundle(t, tspec), Terminal: true, Stdout: turi, Stderr: turi})
	if _, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: tid}); err != nil {
		t.Fatal(err)
	}
	if w, err := st.s.Wait(ctx, &taskAPI.WaitRequest{ID: tid}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("Wait = %v, %v; want exit 0", w, err)
	}
	if b, err := os.ReadFile(tout); err != nil || !strings.Contains(string(b), "tty-hello") || !strings.Contains(string(b), "tty-oops") {
		t.Errorf("terminal output at the logger = %q, %v; want both lines", b, err)
	}
	if b, err := os.ReadFile(terr); err != nil || len(b) != 0 {
		t.Errorf("logger's fd 4 with a terminal = %q, %v; want nothing", b, err)
	}

	// An exec's logger is told the exec's ID, as by the stock shim.
	sid := id + "-sleep"
	st.create(t, &taskAPI.CreateTaskRequest{ID: sid, Bundle: runckittest.Bundle(t, runckittest.Spec(t, "sleep", "1000"))})
	if _, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: sid}); err != nil {
		t.Fatal(err)
	}
	eout := filepath.Join(dir, "exec.out")
	euri := (&url.URL{Scheme: "binary", Path: bin, RawQuery: url.Values{"out": {eout}, "err": {eout + ".err"}}.Encode()}).String()
	proc, err := json.Marshal(runckittest.ProcessSpec("echo", "from-exec"))
	if err != nil {
		t.Fatal(err)
	}
	pspec := &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}
	if _, err := st.s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: sid, ExecID: "logged-exec", Spec: pspec, Stdout: euri, Stderr: euri}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: sid, ExecID: "logged-exec"}); err != nil {
		t.Fatal(err)
	}
	if w, err := st.s.Wait(ctx, &taskAPI.WaitRequest{ID: sid, ExecID: "logged-exec"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("exec Wait = %v, %v", w, err)
	}
	if b, err := os.ReadFile(eout); err != nil || string(b) != "from-exec\n" {
		t.Errorf("exec's output at its logger = %q, %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "calls")); !strings.HasSuffix(string(b), "\nlogged-exec rk-binlog\n") {
		t.Errorf("logger calls %q; want the exec's logger told CONTAINER_ID logged-exec", b)
	}
}

// entries lists what is under dir, for "nothing left behind".
func entries(dir string) string {
	var names []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if p != dir {
			names = append(names, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	sort.Strings(names)
	return strings.Join(names, " ")
}

// Malformed task API requests get the gRPC code containerd maps to the
// right errdefs kind, and leave nothing: no runc state in the runtime root,
// no file the shim wrote in the bundle, no bundle made, no mount.
func TestBadInputShimService(t *testing.T) {
	st := newServiceTest(t, "rk-badinput")
	ctx := st.ctx(t)
	id := strings.ReplaceAll("bad-shim-"+time.Now().Format("150405.000"), ".", "-")
	running := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "1000"))
	st.create(t, &taskAPI.CreateTaskRequest{ID: id, Bundle: running})
	if _, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	runningInfo, err := os.ReadFile(filepath.Join(running, shimInfoFile))
	if err != nil {
		t.Fatal(err)
	}

	// Every bundle a bad request names, with what it held before.
	before := map[string]string{}
	bundle := func() string {
		b := runckittest.Bundle(t, runckittest.Spec(t, "true"))
		before[b] = entries(b)
		return b
	}
	emptyBundle := t.TempDir()
	before[emptyBundle] = ""
	anyOf := func(m any) *anypb.Any {
		a, err := typeurl.MarshalAnyToProto(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	proc, _ := json.Marshal(runckittest.ProcessSpec("true"))
	spec := &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}
	create := func(r *taskAPI.CreateTaskRequest) error {
		if r.Options == nil {
			r.Options = st.opts
		}
		_, err := st.s.Create(ctx, r)
		return err
	}
	exec := func(r *taskAPI.ExecProcessRequest) error {
		_, err := st.s.Exec(ctx, r)
		if err == nil {
			st.s.Delete(ctx, &taskAPI.DeleteRequest{ID: r.ID, ExecID: r.ExecID})
		}
		return err
	}
	n := 0
	newID := func() string { n++; return id + "-" + string(rune('a'+n)) }
	cases := []struct {
		name string
		code codes.Code
		run  func() error
	}{
		{"create/no-id", codes.InvalidArgument, func() error { return create(&taskAPI.CreateTaskRequest{Bundle: bundle()}) }},
		{"create/no-bundle", codes.InvalidArgument, func() error { return create(&taskAPI.CreateTaskRequest{ID: newID()}) }},
		{"create/bad-id", codes.InvalidArgument, func() error { return create(&taskAPI.CreateTaskRequest{ID: "../x", Bundle: bundle()}) }},
		{"create/bundle-missing", codes.NotFound, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: filepath.Join(emptyBundle, "missing")})
		}},
		{"create/bundle-without-config", codes.NotFound, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: emptyBundle})
		}},
		{"create/options-of-another-type", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Options: anyOf(&options.CheckpointOptions{Exit: true})})
		}},
		{"create/options-unknown-key", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(),
				Options: anyOf(&runtimeoptions.Options{ConfigBody: []byte("NoSuchOption = 1\n")})})
		}},
		{"create/options-undecodable", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Options: &anypb.Any{TypeUrl: "no.such/Type", Value: []byte{1}}})
		}},
		{"create/no-namespace", codes.FailedPrecondition, func() error {
			_, err := st.s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Options: st.opts})
			return err
		}},
		{"create/stdio-unknown-scheme", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Stdout: "http:///x"})
		}},
		{"create/stdio-relative-fifo", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Stderr: "fifo:relative"})
		}},
		{"create/stdio-binary-missing", codes.NotFound, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Stdout: "binary:///no/such/logger", Stderr: "binary:///no/such/logger"})
		}},
		{"create/stdio-binary-relative", codes.InvalidArgument, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Stdout: "binary:logger"})
		}},
		{"create/stdio-terminal-binary-missing", codes.NotFound, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: newID(), Bundle: bundle(), Terminal: true, Stdout: "binary:///no/such/logger"})
		}},
		{"create/duplicate-id", codes.AlreadyExists, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: id, Bundle: running})
		}},
		{"create/duplicate-id-other-bundle", codes.AlreadyExists, func() error {
			return create(&taskAPI.CreateTaskRequest{ID: id, Bundle: bundle()})
		}},
		{"start/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: "nope"})
			return err
		}},
		{"start/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.Start(ctx, &taskAPI.StartRequest{ID: id, ExecID: "nope"})
			return err
		}},
		{"exec/unknown-container", codes.NotFound, func() error {
			return exec(&taskAPI.ExecProcessRequest{ID: "nope", ExecID: "x", Spec: spec})
		}},
		{"exec/no-exec-id", codes.InvalidArgument, func() error { return exec(&taskAPI.ExecProcessRequest{ID: id, Spec: spec}) }},
		{"exec/bad-exec-id", codes.InvalidArgument, func() error { return exec(&taskAPI.ExecProcessRequest{ID: id, ExecID: "../x", Spec: spec}) }},
		{"exec/no-spec", codes.InvalidArgument, func() error { return exec(&taskAPI.ExecProcessRequest{ID: id, ExecID: "x"}) }},
		{"exec/spec-not-json", codes.InvalidArgument, func() error {
			return exec(&taskAPI.ExecProcessRequest{ID: id, ExecID: "x", Spec: &anypb.Any{TypeUrl: spec.TypeUrl, Value: []byte("{")}})
		}},
		{"exec/stdio-unknown-scheme", codes.InvalidArgument, func() error {
			return exec(&taskAPI.ExecProcessRequest{ID: id, ExecID: "x", Spec: spec, Stdout: "ftp:///x"})
		}},
		{"exec/stdio-binary-missing", codes.NotFound, func() error {
			return exec(&taskAPI.ExecProcessRequest{ID: id, ExecID: "x", Spec: spec, Stderr: "binary:///no/such/logger?a=b"})
		}},
		{"kill/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.Kill(ctx, &taskAPI.KillRequest{ID: id, ExecID: "nope", Signal: 9})
			return err
		}},
		{"kill/bad-signal", codes.InvalidArgument, func() error {
			_, err := st.s.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: 999})
			return err
		}},
		{"delete/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Delete(ctx, &taskAPI.DeleteRequest{ID: "nope"})
			return err
		}},
		{"delete/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.Delete(ctx, &taskAPI.DeleteRequest{ID: id, ExecID: "nope"})
			return err
		}},
		{"state/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.State(ctx, &taskAPI.StateRequest{ID: id, ExecID: "nope"})
			return err
		}},
		{"wait/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.Wait(ctx, &taskAPI.WaitRequest{ID: id, ExecID: "nope"})
			return err
		}},
		{"closeio/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.CloseIO(ctx, &taskAPI.CloseIORequest{ID: id, ExecID: "nope", Stdin: true})
			return err
		}},
		{"resize/unknown-exec", codes.NotFound, func() error {
			_, err := st.s.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: id, ExecID: "nope", Width: 80, Height: 24})
			return err
		}},
		{"pids/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Pids(ctx, &taskAPI.PidsRequest{ID: "nope"})
			return err
		}},
		{"pause/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Pause(ctx, &taskAPI.PauseRequest{ID: "nope"})
			return err
		}},
		{"resume/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Resume(ctx, &taskAPI.ResumeRequest{ID: "nope"})
			return err
		}},
		{"stats/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Stats(ctx, &taskAPI.StatsRequest{ID: "nope"})
			return err
		}},
		{"update/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "nope"})
			return err
		}},
		{"update/resources-undecodable", codes.InvalidArgument, func() error {
			_, err := st.s.Update(ctx, &taskAPI.UpdateTaskRequest{ID: id, Resources: &anypb.Any{TypeUrl: "no.such/Type", Value: []byte{1}}})
			return err
		}},
		{"checkpoint/unknown-container", codes.NotFound, func() error {
			_, err := st.s.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: "nope", Path: t.TempDir()})
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if got := status.Code(err); got != tc.code {
				t.Errorf("%v: code %v, want %v", err, got, tc.code)
			}
			for b, was := range before {
				if got := entries(b); got != was {
					t.Errorf("bundle %s holds %q after the request, want %q", b, got, was)
				}
			}
		})
	}
	// The running container is untouched by the requests that named it.
	if b, err := os.ReadFile(filepath.Join(running, shimInfoFile)); err != nil || string(b) != string(runningInfo) {
		t.Errorf("the running container's shim info changed: %q, %v; was %q", b, err, runningInfo)
	}
	if r, err := st.s.State(ctx, &taskAPI.StateRequest{ID: id}); err != nil || r.Status.String() != "RUNNING" {
		t.Errorf("the running container: %v, %v", r, err)
	}
	stateDirs, _ := os.ReadDir(filepath.Join(st.root, st.ns))
	for _, e := range stateDirs {
		if e.Name() != id {
			t.Errorf("runc state left in %s: %s", st.root, e.Name())
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for b := range before {
		if strings.Contains(string(mi), " "+b+"/") {
			t.Errorf("a mount left under %s", b)
		}
	}
}
