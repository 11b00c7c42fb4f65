package runckit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit/runckittest"
)

// Stats.Raw, which runckit reads from cgroupfs itself, is what
// containerd's cgroups library reads for the same cgroup: here on a real
// container, paused so that its counters hold still between the two reads
// (but for memory usage and pressure: see settle).
// (The library is a test dependency only: see cgroupmetrics.go.)
func TestStatsRawMatchesContainerdCgroups(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100000")
	limit, pids := int64(64<<20), int64(50)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, Pids: &specs.LinuxPids{Limit: &pids}}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the kernel's deferred counters settle
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want proto.Message
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(c.Init().Pid())
		if err != nil {
			t.Fatal(err)
		}
		mgr, err := cgroup2.Load(group)
		if err != nil {
			t.Fatal(err)
		}
		if want, err = mgr.Stat(); err != nil {
			t.Fatal(err)
		}
	} else {
		cg, err := cgroup1.Load(cgroup1.PidPath(c.Init().Pid()))
		if err != nil {
			t.Fatal(err)
		}
		if want, err = cg.Stat(cgroup1.IgnoreNotExist); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := st.Raw.(proto.Message)
	if !ok {
		t.Fatalf("Raw is %T", st.Raw)
	}
	got = proto.Clone(got)
	settle(got.ProtoReflect(), want.ProtoReflect())
	if !proto.Equal(got, want) {
		t.Errorf("runckit's metrics differ from containerd's cgroups library's:\nrunckit:\n%s\ncgroups:\n%s",
			prototext.Format(got), prototext.Format(want))
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}

// settle makes got's figures that move while a container is paused equal
// to want's, where they are within 1 MiB: memory usage (the kernel charges
// memory in per-CPU batches, so a frozen cgroup's usage still moves by a
// few pages; on v2 memory.stat's kernel figures too, whose mapping
// TestV2MetricsMatchContainerdCgroups checks exactly) and pressure (PSI
// averages decay between two reads). Everything else must match exactly.
func settle(got, want protoreflect.Message) {
	msg := string(want.Descriptor().FullName())
	drifts := func(fd protoreflect.FieldDescriptor) bool {
		return strings.HasSuffix(msg, "v1.MemoryEntry") && fd.Name() == "usage" || strings.HasSuffix(msg, "v2.MemoryStat")
	}
	want.Range(func(fd protoreflect.FieldDescriptor, wv protoreflect.Value) bool {
		if !got.Has(fd) {
			return true
		}
		gv := got.Get(fd)
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			if gv.List().Len() == wv.List().Len() {
				for i := 0; i < wv.List().Len(); i++ {
					settle(gv.List().Get(i).Message(), wv.List().Get(i).Message())
				}
			}
		case fd.Kind() == protoreflect.MessageKind && fd.Name() == "psi":
			got.Set(fd, wv)
		case fd.Kind() == protoreflect.MessageKind && !fd.IsMap():
			settle(gv.Message(), wv.Message())
		case drifts(fd) && fd.Kind() == protoreflect.Uint64Kind && !fd.IsList():
			a, b := gv.Uint(), wv.Uint()
			if a-b <= 1<<20 || b-a <= 1<<20 {
				got.Set(fd, wv)
			}
		}
		return true
	})
}
