package runckit_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestRecordWritesAreShared: callers that save the record while a write is
// under way share the next write (a group commit) instead of queueing one
// write each, and each returns only once a record as new as its call is on
// disk. 64 concurrent saves behind a slow first write cost 2 writes; before,
// each caller wrote the snapshot it took on entry, in turn (the shim's
// 200-exec bursts queued on it).
func TestRecordWritesAreShared(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	stateDir := t.TempDir()
	c, err := runckit.NewContainer(ctx, "rk-groupcommit-"+newID(t), runckittest.Bundle(t, runckittest.Spec(t, "sleep", "1000")),
		runckit.WithRuntimeRoot(runckittest.RuntimeRoot(t)), runckit.WithStateDir(stateDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Delete(ctx, runckit.DeleteForce()) })

	var writes atomic.Int32
	first := make(chan struct{})
	release := make(chan struct{})
	runckit.SetRecordWriteHook(t, func() {
		if writes.Add(1) == 1 {
			close(first)
			<-release // hold the first write while the others arrive
		}
	})
	readVersion := func() uint64 {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(stateDir, "*.json"))
		if len(files) != 1 {
			t.Fatalf("records in state dir: %v", files)
		}
		data, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Version uint64 `json:"version"`
		}
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		return r.Version
	}

	go c.SaveRecord()
	<-first
	const n = 64
	var wg sync.WaitGroup
	var returned atomic.Int32
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SaveRecord()
			returned.Add(1)
		}()
	}
	time.Sleep(200 * time.Millisecond) // let all 64 queue behind the held write
	if got := returned.Load(); got != 0 {
		t.Fatalf("%d saves returned while the write they need was not done", got)
	}
	before := readVersion()
	close(release)
	wg.Wait()
	if got := writes.Load(); got != 2 {
		t.Errorf("%d record writes for 1+%d concurrent saves; want 2 (the held one and one shared by the rest)", got, n)
	}
	if after := readVersion(); after <= before {
		t.Errorf("record version %d after the saves, %d before: the queued saves' write is missing", after, before)
	}
}
