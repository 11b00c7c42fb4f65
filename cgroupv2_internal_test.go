package runckit

import (
	"math"
	"path/filepath"
	"testing"
)

// A v2 cgroup without limits says "max" in pids.max and memory.max: Stats
// reports no pids limit as 0, as on v1 and as PidsStats documents, and no
// memory limit as math.MaxUint64, as MemoryStats documents. (Seen for real
// in the cgroup v2 lane: Pids.Limit was 18446744073709551615.)
func TestCgroupV2NoLimitsAsDocumented(t *testing.T) {
	mnt, group := fakeCgroup2(t)
	writeCgroupFiles(t, filepath.Join(mnt, group), map[string]string{"pids.max": "max\n", "memory.max": "max\n"})
	cg := &cgroupV2{dir: filepath.Join(mnt, group)}
	st, err := cg.stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pids.Limit != 0 {
		t.Errorf("Pids.Limit = %d for pids.max \"max\", want 0", st.Pids.Limit)
	}
	if st.Memory.Limit != math.MaxUint64 {
		t.Errorf("Memory.Limit = %d for memory.max \"max\", want math.MaxUint64", st.Memory.Limit)
	}
}
