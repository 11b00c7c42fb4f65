package runckit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"golang.org/x/sys/unix"
)

// cgroup v2 can not be mounted for real on this hybrid host, so these tests
// run the v2 code over a fabricated cgroupfs tree: the same files, the same
// formats, read by the same cgroups/v3 code.
func fakeCgroup2(t *testing.T) (mountpoint, group string) {
	t.Helper()
	mountpoint = t.TempDir()
	group = "/runckit/c1"
	dir := filepath.Join(mountpoint, group)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"cgroup.controllers":  "cpu memory pids io\n",
		"cpu.stat":            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 3\nthrottled_usec 42\n",
		"memory.current":      "1048576\n",
		"memory.max":          "33554432\n",
		"memory.swap.current": "4096\n",
		"memory.swap.max":     "max\n",
		"memory.stat":         "anon 524288\nfile 262144\n",
		"memory.events":       "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
		"pids.current":        "3\n",
		"pids.max":            "100\n",
		"io.stat":             "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=10 wbytes=20 rios=3 wios=4 dbytes=0 dios=0\n",
	}
	writeCgroupFiles(t, dir, files)
	return mountpoint, group
}

// writeCgroupFiles writes a fabricated cgroup directory's files.
func writeCgroupFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupV2StatsFromFiles(t *testing.T) {
	mnt, group := fakeCgroup2(t)
	cg := &cgroupV2{dir: filepath.Join(mnt, group)}
	st, err := cg.stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		CPU:    CPUStats{UsageNanos: 1500000, UserNanos: 1000000, SystemNanos: 500000, Periods: 7, ThrottledPeriods: 3, ThrottledNanos: 42000},
		Memory: MemoryStats{Usage: 1048576, Limit: 33554432, Cache: 262144, RSS: 524288, Swap: 4096, OOMKills: 1},
		Pids:   PidsStats{Current: 3, Limit: 100},
		IO:     IOStats{ReadBytes: 110, WriteBytes: 220, ReadOps: 4, WriteOps: 6},
	}
	raw, ok := st.Raw.(*v2stats.Metrics)
	if !ok || raw.GetMemoryEvents().GetMax() != 5 || raw.GetCPU().GetUsageUsec() != 1500 {
		t.Errorf("Raw = %T %v; want the *v2stats.Metrics the figures came from", st.Raw, st.Raw)
	}
	st.Raw = nil
	if *st != want {
		t.Errorf("stats =\n%+v\nwant\n%+v", *st, want)
	}
	oom := &memoryCgroupV2{dir: filepath.Join(mnt, group)}
	if n, err := oom.oomKills(); err != nil || n != 1 {
		t.Errorf("oomKills = %d, %v; want 1", n, err)
	}
}

// The v2 OOM notifier is memory.events itself: the kernel reports a change
// as EPOLLPRI (TestKernfsChangeIsEPOLLPRI shows it on a real cgroup), and
// the counter is read through the same fd, from its start, however often.
func TestCgroupV2OOMNotifier(t *testing.T) {
	mnt, group := fakeCgroup2(t)
	cg := &memoryCgroupV2{dir: filepath.Join(mnt, group)}
	n, err := cg.oomNotifier()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(n.fd)
	if n.events != unix.EPOLLPRI || n.beforeKill || n.kills == nil {
		t.Fatalf("notice = events %#x beforeKill %v kills %v; want EPOLLPRI, false, a reader", n.events, n.beforeKill, n.kills != nil)
	}
	if k, err := n.kills(); err != nil || k != 1 {
		t.Fatalf("kills through the fd = %d, %v; want 1", k, err)
	}
	events := filepath.Join(mnt, group, "memory.events")
	if err := os.WriteFile(events, []byte("oom 2\noom_kill 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if k, err := n.kills(); err != nil || k != 2 {
			t.Errorf("kills through the fd, read %d = %d, %v; want 2", i+1, k, err)
		}
	}
}

// A cgroup v2 file that the kernel notifies (memory.events, cgroup.events)
// reports the change as EPOLLPRI on an fd opened before it, and reading
// the file clears it: what the v2 OOM notice relies on. cgroup.events is
// used because the populated flag can be changed without an OOM.
func TestKernfsChangeIsEPOLLPRI(t *testing.T) {
	root := "/sys/fs/cgroup/unified"
	if isUnifiedHost() {
		root = unifiedMountpoint
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		t.Skipf("no cgroup v2 hierarchy at %s: %v", root, err)
	}
	dir, err := os.MkdirTemp(root, "runckit-kernfs-test-")
	if err != nil {
		t.Skipf("can not make a cgroup under %s: %v", root, err)
	}
	defer os.Remove(dir)
	fd, err := unix.Open(filepath.Join(dir, "cgroup.events"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	pri := func() bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
		n, _ := unix.Poll(fds, int((2 * time.Second).Milliseconds()))
		return n == 1 && fds[0].Revents&unix.POLLPRI != 0
	}
	sleep := exec.Command("sleep", "100")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(sleep.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	if !pri() {
		t.Fatal("no EPOLLPRI after the cgroup became populated")
	}
	var buf [256]byte
	if _, err := unix.Pread(fd, buf[:], 0); err != nil {
		t.Fatal(err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
	if n, _ := unix.Poll(fds, 0); n != 0 && fds[0].Revents&unix.POLLPRI != 0 {
		t.Fatal("EPOLLPRI still reported after the file was read")
	}
	sleep.Process.Kill()
	sleep.Wait()
	if !pri() {
		t.Fatal("no EPOLLPRI after the cgroup became empty")
	}
}

func readable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, int((200 * time.Millisecond).Milliseconds()))
	return n == 1
}

func TestCgroupV1StatsMapping(t *testing.T) {
	m := &v1stats.Metrics{
		CPU: &v1stats.CPUStat{
			Usage:      &v1stats.CPUUsage{Total: 9, User: 5, Kernel: 4},
			Throttling: &v1stats.Throttle{Periods: 2, ThrottledPeriods: 1, ThrottledTime: 77},
		},
		Memory: &v1stats.MemoryStat{
			Cache: 10, RSS: 20,
			Usage: &v1stats.MemoryEntry{Usage: 100, Limit: 200, Max: 150},
			Swap:  &v1stats.MemoryEntry{Usage: 130},
		},
		MemoryOomControl: &v1stats.MemoryOomControl{OomKill: 2},
		Pids:             &v1stats.PidsStat{Current: 4, Limit: 50},
		Blkio: &v1stats.BlkIOStat{
			IoServiceBytesRecursive: []*v1stats.BlkIOEntry{{Op: "Read", Value: 7}, {Op: "Write", Value: 8}, {Op: "Total", Value: 15}},
			IoServicedRecursive:     []*v1stats.BlkIOEntry{{Op: "Read", Value: 1}, {Op: "Write", Value: 2}},
		},
	}
	want := Stats{
		CPU:    CPUStats{UsageNanos: 9, UserNanos: 5, SystemNanos: 4, Periods: 2, ThrottledPeriods: 1, ThrottledNanos: 77},
		Memory: MemoryStats{Usage: 100, Limit: 200, MaxUsage: 150, Cache: 10, RSS: 20, Swap: 30, OOMKills: 2},
		Pids:   PidsStats{Current: 4, Limit: 50},
		IO:     IOStats{ReadBytes: 7, WriteBytes: 8, ReadOps: 1, WriteOps: 2},
	}
	if got := statsFromV1(m); *got != want {
		t.Errorf("statsFromV1 =\n%+v\nwant\n%+v", *got, want)
	}
}

func TestUnifiedHostStatsPath(t *testing.T) {
	if !isUnifiedHost() {
		t.Skip("host is not pure cgroup v2 (cgroups.Mode() != Unified): the v2 path is covered by the fabricated-tree tests above")
	}
	cg, err := loadCgroup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cg.stats(); err != nil {
		t.Fatal(err)
	}
}

// fakeOOMSource announces notices on an eventfd the test writes, as v1's
// cgroup.event_control registration does when an OOM starts.
type fakeOOMSource struct{ efd int }

func (f *fakeOOMSource) oomKills() (uint64, error) { return 0, nil }
func (f *fakeOOMSource) oomNotifier() (oomNotice, error) {
	fd, err := unix.FcntlInt(uintptr(f.efd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return oomNotice{}, err
	}
	drain := func() {
		var buf [8]byte
		unix.Read(fd, buf[:])
	}
	return oomNotice{fd: fd, events: unix.EPOLLIN, drain: drain, beforeKill: true}, nil
}

// Where notices come before the kills they announce (v1), a SIGKILL exit
// skips the kill counter only while no notice is waiting or being looked
// into; before the notifier is armed, and on v2, it never skips.
func TestOOMMayHaveKilled(t *testing.T) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	w := (&Container{}).newOOMWatchOn(&fakeOOMSource{efd: efd})
	if !w.mayHaveKilled() {
		t.Error("no notifier yet: mayHaveKilled = false, want true")
	}
	n, err := w.cg.oomNotifier()
	if err != nil {
		t.Fatal(err)
	}
	w.notice = n // armed, but not in the loop: the test plays its part
	defer unix.Close(n.fd)
	if w.mayHaveKilled() {
		t.Error("no notice: mayHaveKilled = true, want false")
	}
	unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	if !w.mayHaveKilled() {
		t.Error("notice waiting: mayHaveKilled = false, want true")
	}
	w.pending.Add(1) // onNotify, before its drain
	n.drain()
	if !w.mayHaveKilled() {
		t.Error("notice drained but not yet checked: mayHaveKilled = false, want true")
	}
	w.pending.Add(-1)
	if w.mayHaveKilled() {
		t.Error("notice checked: mayHaveKilled = true, want false")
	}
	w.notice.beforeKill = false
	if !w.mayHaveKilled() {
		t.Error("notices that may follow the kill (v2): mayHaveKilled = false, want true")
	}
	var nilWatch *oomWatch
	if nilWatch.mayHaveKilled() {
		t.Error("no memory cgroup: mayHaveKilled = true, want false")
	}
}
