package runckit

import (
	"path/filepath"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// On a fabricated cgroup v2 directory with every file the reader knows,
// runckit reads what containerd's cgroups library reads.
func TestV2MetricsMatchContainerdCgroups(t *testing.T) {
	mnt, group := fakeCgroup2(t)
	dir := filepath.Join(mnt, group)
	extra := map[string]string{
		"cpu.stat":            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 3\nthrottled_usec 42\nnr_bursts 2\nburst_usec 9\n",
		"cpu.pressure":        "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=77\n",
		"memory.pressure":     "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
		"io.pressure":         "some avg10=2.00 avg60=1.00 avg300=0.50 total=99\n",
		"memory.stat":         "anon 524288\nfile 262144\nkernel_stack 16384\nslab 1000\nsock 0\nshmem 8\nfile_mapped 4096\nfile_dirty 1\nfile_writeback 2\nanon_thp 0\ninactive_anon 3\nactive_anon 4\ninactive_file 5\nactive_file 6\nunevictable 7\nslab_reclaimable 8\nslab_unreclaimable 9\npgfault 1234\npgmajfault 12\nworkingset_refault 1\nworkingset_activate 2\nworkingset_nodereclaim 3\npgrefill 4\npgscan 5\npgsteal 6\npgactivate 7\npgdeactivate 8\npglazyfree 9\npglazyfreed 10\nthp_fault_alloc 11\nthp_collapse_alloc 12\n",
		"memory.peak":         "2097152\n",
		"memory.swap.peak":    "8192\n",
		"rdma.current":        "mlx4_0 hca_handle=2 hca_object=2000\n",
		"rdma.max":            "mlx4_0 hca_handle=max hca_object=max\nocrdma1 hca_handle=3 hca_object=max\n",
		"hugetlb.2MB.current": "4194304\n",
		"hugetlb.2MB.max":     "max\n",
		"hugetlb.2MB.events":  "max 3\n",
		"hugetlb.1GB.current": "0\n",
		"hugetlb.1GB.max":     "0\n",
		"hugetlb.1GB.events":  "max 0\n",
	}
	writeCgroupFiles(t, dir, extra)
	got, err := readV2Metrics(dir)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := cgroup2.Load(group, cgroup2.WithMountpoint(mnt))
	if err != nil {
		t.Fatal(err)
	}
	want, err := mgr.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("runckit:\n%s\ncgroups:\n%s", prototext.Format(got), prototext.Format(want))
	}
	if got.GetCPU().GetPSI().GetSome().GetTotal() != 12345 || len(got.GetRdma().GetLimit()) != 2 {
		t.Errorf("the fabricated files were not read: %s", prototext.Format(got))
	}
}

// Huge page sizes are named as the hugetlb controller names its files.
func TestHugePageName(t *testing.T) {
	for size, want := range map[uint64]string{64 << 10: "64KB", 2 << 20: "2MB", 32 << 20: "32MB", 1 << 30: "1GB", 16 << 30: "16GB"} {
		if got := hugePageName(size); got != want {
			t.Errorf("hugePageName(%d) = %q, want %q", size, got, want)
		}
	}
}
