package runckit_test

import (
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit/runckittest"
)

// Stats.Raw, which runckit reads from cgroupfs itself, is what
// containerd's cgroups library reads for the same cgroup: here on a real
// container, paused so that its counters hold still between the two reads.
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
	if !proto.Equal(got, want) {
		t.Errorf("runckit's metrics differ from containerd's cgroups library's:\nrunckit:\n%s\ncgroups:\n%s",
			prototext.Format(got), prototext.Format(want))
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}
