package runckit_test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestJoinedPIDNamespaceQuickExecsKeepTheirExits: a container that joins
// another container's PID namespace (a pod's, as CRI makes them) runs its
// execs in that namespace. An exec that exits before runckit has its pidfd
// must still be our unreaped child then: the orphan reaper must hold the
// zombies of the namespace the exec runs in, not only of namespaces no
// container owns. Before, 'sh -c exit' execs there failed to start now and
// then with "pidfd_open: no such process" (seen in the shim's CRI test).
func TestJoinedPIDNamespaceQuickExecsKeepTheirExits(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	pod := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	if err := pod.Start(ctx); err != nil {
		t.Fatal(err)
	}
	spec := runckittest.Spec(t, "sleep", "100000")
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			spec.Linux.Namespaces[i].Path = "/proc/" + strconv.Itoa(pod.Init().Pid()) + "/ns/pid"
		}
	}
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const rounds, width = 20, 8
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make(chan error, width)
		for i := 0; i < width; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				id := fmt.Sprintf("quick-%d-%d", r, i)
				p, err := c.Exec(ctx, id, runckittest.ProcessSpec("sh", "-c", "exit 3"), runckit.Stdio{})
				if err != nil {
					errs <- err
					return
				}
				if err := p.Start(ctx); err != nil {
					errs <- fmt.Errorf("start %s: %w", id, err)
					return
				}
				st, err := p.Wait(ctx)
				if err != nil || st.Code != 3 {
					errs <- fmt.Errorf("wait %s = %v, %v; want exit 3", id, st, err)
				}
				p.Delete(ctx)
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			t.Fatalf("round %d of %d", r+1, rounds)
		}
	}
}
