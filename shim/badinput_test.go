package runckitshim

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
)

// TestRuncOptionsRefusesOtherTypes: containerd passes the runtime options as
// an Any; a type other than runc's Options is refused as InvalidArgument,
// and none means defaults.
func TestRuncOptionsRefusesOtherTypes(t *testing.T) {
	o, err := runcOptions(nil)
	if err != nil || o == nil {
		t.Fatalf("runcOptions(nil) = %v, %v; want defaults", o, err)
	}
	good, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "runc-fp", Root: "/run/x"})
	if err != nil {
		t.Fatal(err)
	}
	o, err = runcOptions(good)
	if err != nil || o.BinaryName != "runc-fp" || o.Root != "/run/x" {
		t.Fatalf("runcOptions(runc options) = %v, %v", o, err)
	}
	bad, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{Exit: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runcOptions(bad); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("runcOptions(checkpoint options) = %v; want InvalidArgument", err)
	}
}

// TestRuncOptionsFromCRIGenericType: CRI sends a non-runc runtime's options
// table as a TOML body in runtimeoptions.Options; the shim reads runc's
// fields from it, and refuses a key that is not one of them or a body that
// is not TOML.
func TestRuncOptionsFromCRIGenericType(t *testing.T) {
	generic := func(body string) typeurl.Any {
		a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	o, err := runcOptions(generic("BinaryName = 'runc-fp'\nSystemdCgroup = true\nRoot = '/run/x'\n"))
	if err != nil || o.BinaryName != "runc-fp" || !o.SystemdCgroup || o.Root != "/run/x" {
		t.Fatalf("runcOptions(generic) = %v, %v", o, err)
	}
	if o, err := runcOptions(generic("")); err != nil || o.BinaryName != "" {
		t.Fatalf("runcOptions(empty generic) = %v, %v; want defaults", o, err)
	}
	for _, body := range []string{"NoSuchOption = 1\n", "BinaryName = \n", "SystemdCgroup = 'yes'\n"} {
		if _, err := runcOptions(generic(body)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("runcOptions(generic %q) = %v; want InvalidArgument", body, err)
		}
	}
	path := filepath.Join(t.TempDir(), "runckit.toml")
	if err := os.WriteFile(path, []byte("BinaryName = '/usr/sbin/runc'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if o, err := runcOptions(a); err != nil || o.BinaryName != "/usr/sbin/runc" {
		t.Fatalf("runcOptions(generic, config path) = %v, %v", o, err)
	}
}

// TestCreateWithoutIDIsInvalidArgument: the error crosses ttrpc as a gRPC
// status that containerd maps back to InvalidArgument.
func TestCreateWithoutIDIsInvalidArgument(t *testing.T) {
	s := &service{tasks: map[string]*shimTask{}}
	for _, r := range []*taskAPI.CreateTaskRequest{{Bundle: "/tmp/x"}, {ID: "x"}} {
		_, err := s.Create(context.Background(), r)
		if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
			t.Errorf("Create(%v) = %v; want InvalidArgument", r, err)
		}
	}
	if _, err := s.State(context.Background(), &taskAPI.StateRequest{ID: "nope"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("State of an unknown container = %v; want NotFound", err)
	}
}
