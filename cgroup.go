package runckit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/cgroups/v3"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/internal/epoll"
)

// Stats are a container's resource figures from its cgroup, the same
// fields whether the host runs cgroup v1 or v2. Where the two hierarchies
// differ in what they can say, the field's doc says how; both are tested
// for real (v2 on Linux 6.1 in the cgroup v2 lane, with runc and crun).
type Stats struct {
	CPU    CPUStats
	Memory MemoryStats
	Pids   PidsStats
	IO     IOStats

	// Raw is everything the cgroup was read for, in the types of
	// github.com/containerd/cgroups/v3 that containerd's metrics use:
	// *cgroup1/stats.Metrics on a v1 or hybrid host, *cgroup2/stats.Metrics
	// on a unified one (per-CPU usage, hugetlb, the whole memory.stat, I/O
	// per device, PSI). A containerd shim returns it as its metrics.
	Raw any
}

// CPUStats are cumulative CPU times, in nanoseconds, and CFS throttling.
// cgroup v2 counts in microseconds (cpu.stat), so there the times are
// multiples of 1000; v1 counts user and system time in clock ticks.
type CPUStats struct {
	UsageNanos       uint64
	UserNanos        uint64
	SystemNanos      uint64
	Periods          uint64
	ThrottledPeriods uint64
	ThrottledNanos   uint64
}

// MemoryStats are in bytes, except OOMKills, a count.
type MemoryStats struct {
	Usage uint64
	// Limit is the memory limit. No limit is the kernel's own figure:
	// math.MaxUint64 on v2 (memory.max says "max"), the largest page
	// multiple below 1<<63 on v1 (9223372036854771712 with 4 KiB pages).
	Limit uint64
	// MaxUsage is the high-water mark: v1's max_usage_in_bytes, v2's
	// memory.peak, which Linux has from 5.19; 0 on v2 before that.
	MaxUsage uint64
	Cache    uint64 // page cache (v1 cache, v2 file)
	RSS      uint64 // anonymous memory (v1 rss, v2 anon)
	Swap     uint64 // swap alone (v1's memsw counts memory too; it is subtracted)
	// OOMKills counts processes the OOM killer ended in the cgroup (v1
	// memory.oom_control, v2 memory.events oom_kill).
	OOMKills uint64
}

// PidsStats count tasks.
type PidsStats struct {
	Current uint64
	Limit   uint64 // 0 means no limit, on v1 and v2 alike ("max" in pids.max)
}

// IOStats are summed over all block devices.
type IOStats struct {
	ReadBytes  uint64
	WriteBytes uint64
	ReadOps    uint64
	WriteOps   uint64
}

// Stats reads the container's cgroup figures.
func (c *Container) Stats(ctx context.Context) (*Stats, error) {
	c.mu.Lock()
	err := c.checkLocked(opStats)
	pid := c.init.pid
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	cg, err := loadCgroup(pid)
	if err != nil {
		return nil, fmt.Errorf("runckit: stats of container %q: %w", c.id, err)
	}
	return cg.stats()
}

// containerCgroup is a container's cgroup on either hierarchy.
type containerCgroup interface {
	stats() (*Stats, error)
}

// oomSource is where a container's OOM kills are counted and announced.
type oomSource interface {
	// oomKills reads the cgroup's OOM kill counter.
	oomKills() (uint64, error)
	// oomNotifier returns the fd that tells when the OOM counter may have
	// changed.
	oomNotifier() (oomNotice, error)
}

// oomNotice is an OOM notifier fd and what goes with it.
type oomNotice struct {
	fd     int
	events uint32 // what the fd reports a notice as
	drain  func() // consumes a notice
	// kills reads the counter through fd, sparing an open of the file,
	// which costs milliseconds while many of the cgroup's processes die;
	// nil when fd is not the counter's file.
	kills func() (uint64, error)
	// beforeKill is true when a notice is raised, synchronously, before
	// the kernel counts an OOM kill it announces (v1); v2's notices are
	// rate limited and may come after.
	beforeKill bool
}

// loadCgroup finds the cgroup of pid on this host's hierarchy, for Stats.
func loadCgroup(pid int) (containerCgroup, error) {
	cgs := pidCgroups(strconv.Itoa(pid))
	if cgs == nil {
		return nil, fmt.Errorf("cgroups of pid %d: /proc/%d/cgroup unreadable: %w", pid, pid, errdefs.ErrNotFound)
	}
	if isUnifiedHost() {
		group, ok := cgs["0"]
		if !ok {
			return nil, fmt.Errorf("pid %d has no cgroup v2 path: %w", pid, errdefs.ErrNotFound)
		}
		return &cgroupV2{dir: filepath.Join(unifiedMountpoint, group)}, nil
	}
	// Each controller's directory: its hierarchy's mount, below the
	// mount's own root.
	dirs := make(map[string]string)
	for _, m := range cgroupMounts() {
		p, ok := cgs[m.hierarchy]
		if !ok || m.hierarchy == "0" {
			continue
		}
		rel, err := filepath.Rel(m.root, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, ctrl := range strings.Split(m.hierarchy, ",") {
			dirs[ctrl] = filepath.Join(m.point, rel)
		}
	}
	return &cgroupV1{dirs: dirs}, nil
}

// oomSourceFor finds pid's memory cgroup from /proc/<pid>/cgroup alone:
// it runs on every create, where loading the whole hierarchy would cost
// milliseconds.
func oomSourceFor(pid int) (oomSource, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil, err
	}
	unified := isUnifiedHost()
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if unified && parts[0] == "0" && parts[1] == "" {
			return &memoryCgroupV2{dir: filepath.Join(unifiedMountpoint, parts[2])}, nil
		}
		for _, ctrl := range strings.Split(parts[1], ",") {
			if !unified && ctrl == "memory" {
				return &memoryCgroupV1{dir: filepath.Join(v1Root, "memory", parts[2])}, nil
			}
		}
	}
	return nil, fmt.Errorf("pid %d has no memory cgroup: %w", pid, errdefs.ErrNotFound)
}

const (
	v1Root            = "/sys/fs/cgroup"
	unifiedMountpoint = "/sys/fs/cgroup"
)

// cgroupV1 is a cgroup on the v1 hierarchies: its directory per controller.
type cgroupV1 struct {
	dirs map[string]string
}

func (g *cgroupV1) stats() (*Stats, error) {
	m, err := readV1Metrics(g.dirs)
	if err != nil {
		return nil, fmt.Errorf("read cgroup v1 stats: %w", err)
	}
	st := statsFromV1(m)
	st.Raw = m
	return st, nil
}

// memoryCgroupV1 is a v1 memory cgroup directory, as an oomSource.
type memoryCgroupV1 struct{ dir string }

func (g *memoryCgroupV1) oomKills() (uint64, error) {
	return readKeyedCounter(filepath.Join(g.dir, "memory.oom_control"), "oom_kill")
}

// oomNotifier registers an eventfd for memory.oom_control through
// cgroup.event_control: the v1 way. The kernel signals it when an OOM
// starts, before the kill, and when the cgroup is removed, which the
// counter check tells apart.
func (g *memoryCgroupV1) oomNotifier() (oomNotice, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return oomNotice{}, fmt.Errorf("eventfd: %w", err)
	}
	control, err := os.Open(filepath.Join(g.dir, "memory.oom_control"))
	if err != nil {
		unix.Close(efd)
		return oomNotice{}, err
	}
	defer control.Close() // the registration holds its own reference
	reg := fmt.Sprintf("%d %d", efd, control.Fd())
	if err := os.WriteFile(filepath.Join(g.dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		unix.Close(efd)
		return oomNotice{}, fmt.Errorf("register OOM eventfd: %w", err)
	}
	drain := func() {
		var buf [8]byte
		unix.Read(efd, buf[:])
	}
	return oomNotice{fd: efd, events: unix.EPOLLIN, drain: drain, beforeKill: true}, nil
}

func statsFromV1(m *v1stats.Metrics) *Stats {
	var s Stats
	if cpu := m.GetCPU(); cpu != nil {
		s.CPU.UsageNanos = cpu.GetUsage().GetTotal()
		s.CPU.UserNanos = cpu.GetUsage().GetUser()
		s.CPU.SystemNanos = cpu.GetUsage().GetKernel()
		s.CPU.Periods = cpu.GetThrottling().GetPeriods()
		s.CPU.ThrottledPeriods = cpu.GetThrottling().GetThrottledPeriods()
		s.CPU.ThrottledNanos = cpu.GetThrottling().GetThrottledTime()
	}
	if mem := m.GetMemory(); mem != nil {
		s.Memory.Usage = mem.GetUsage().GetUsage()
		s.Memory.Limit = mem.GetUsage().GetLimit()
		s.Memory.MaxUsage = mem.GetUsage().GetMax()
		s.Memory.Cache = mem.GetCache()
		s.Memory.RSS = mem.GetRSS()
		if sw := mem.GetSwap(); sw != nil && sw.GetUsage() >= s.Memory.Usage {
			s.Memory.Swap = sw.GetUsage() - s.Memory.Usage // memsw counts memory + swap
		}
	}
	s.Memory.OOMKills = m.GetMemoryOomControl().GetOomKill()
	s.Pids.Current = m.GetPids().GetCurrent()
	s.Pids.Limit = m.GetPids().GetLimit()
	for _, e := range m.GetBlkio().GetIoServiceBytesRecursive() {
		switch strings.ToLower(e.GetOp()) {
		case "read":
			s.IO.ReadBytes += e.GetValue()
		case "write":
			s.IO.WriteBytes += e.GetValue()
		}
	}
	for _, e := range m.GetBlkio().GetIoServicedRecursive() {
		switch strings.ToLower(e.GetOp()) {
		case "read":
			s.IO.ReadOps += e.GetValue()
		case "write":
			s.IO.WriteOps += e.GetValue()
		}
	}
	return &s
}

// cgroupV2 is a cgroup v2 directory.
type cgroupV2 struct {
	dir string
}

func (g *cgroupV2) stats() (*Stats, error) {
	m, err := readV2Metrics(g.dir)
	if err != nil {
		return nil, fmt.Errorf("read cgroup v2 stats: %w", err)
	}
	st := statsFromV2(m)
	st.Raw = m
	return st, nil
}

// memoryCgroupV2 is a v2 cgroup directory, as an oomSource.
type memoryCgroupV2 struct{ dir string }

func (g *memoryCgroupV2) oomKills() (uint64, error) {
	return readKeyedCounter(filepath.Join(g.dir, "memory.events"), "oom_kill")
}

// oomNotifier opens memory.events, which reports a change as EPOLLPRI
// (and stays readable): the v2 way. Reading the file clears the notice,
// and the open fd serves every later read of the counter.
func (g *memoryCgroupV2) oomNotifier() (oomNotice, error) {
	fd, err := unix.Open(filepath.Join(g.dir, "memory.events"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return oomNotice{}, fmt.Errorf("open %s/memory.events: %w", g.dir, err)
	}
	kills := func() (uint64, error) { return preadKeyedCounter(fd, "oom_kill") }
	return oomNotice{fd: fd, events: unix.EPOLLPRI, drain: func() { kills() }, kills: kills}, nil
}

func statsFromV2(m *v2stats.Metrics) *Stats {
	var s Stats
	if cpu := m.GetCPU(); cpu != nil {
		s.CPU.UsageNanos = cpu.GetUsageUsec() * 1000
		s.CPU.UserNanos = cpu.GetUserUsec() * 1000
		s.CPU.SystemNanos = cpu.GetSystemUsec() * 1000
		s.CPU.Periods = cpu.GetNrPeriods()
		s.CPU.ThrottledPeriods = cpu.GetNrThrottled()
		s.CPU.ThrottledNanos = cpu.GetThrottledUsec() * 1000
	}
	if mem := m.GetMemory(); mem != nil {
		s.Memory.Usage = mem.GetUsage()
		s.Memory.Limit = mem.GetUsageLimit()
		s.Memory.MaxUsage = mem.GetMaxUsage()
		s.Memory.Cache = mem.GetFile()
		s.Memory.RSS = mem.GetAnon()
		s.Memory.Swap = mem.GetSwapUsage()
	}
	s.Memory.OOMKills = m.GetMemoryEvents().GetOomKill()
	s.Pids.Current = m.GetPids().GetCurrent()
	// cgroups/v3 reads v2's "max" as math.MaxUint64 but v1's as 0, which
	// PidsStats promises for both.
	if s.Pids.Limit = m.GetPids().GetLimit(); s.Pids.Limit == math.MaxUint64 {
		s.Pids.Limit = 0
	}
	for _, e := range m.GetIo().GetUsage() {
		s.IO.ReadBytes += e.GetRbytes()
		s.IO.WriteBytes += e.GetWbytes()
		s.IO.ReadOps += e.GetRios()
		s.IO.WriteOps += e.GetWios()
	}
	return &s
}

// readKeyedCounter reads "key value" lines (memory.oom_control,
// memory.events) and returns key's value.
func readKeyedCounter(path, key string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return keyedCounter(data, path, key)
}

// preadKeyedCounter is readKeyedCounter on an open cgroup file, read from
// its start.
func preadKeyedCounter(fd int, key string) (uint64, error) {
	var buf [1024]byte
	n, err := unix.Pread(fd, buf[:], 0)
	if err != nil {
		return 0, fmt.Errorf("read fd %d: %w", fd, err)
	}
	return keyedCounter(buf[:n], "fd "+strconv.Itoa(fd), key)
}

func keyedCounter(data []byte, path, key string) (uint64, error) {
	kv, err := parseKV(data, path)
	if err != nil {
		return 0, err
	}
	v, ok := kv[key]
	if !ok {
		return 0, fmt.Errorf("%s has no %q line: %w", path, key, errdefs.ErrNotFound)
	}
	return v, nil
}

// oomLoop waits on every container's OOM notifier.
var oomLoop epoll.Loop

// oomWatch turns OOM kills in a container's cgroup into oom events. The
// notifier only says "look": the kill counter is the truth, read again
// before init's exit is published so an OOM is never reported after it.
type oomWatch struct {
	c  *Container
	cg oomSource

	mu     sync.Mutex // guards notice and closed against the loop's handler
	notice oomNotice  // fd -1 until start has registered it
	closed bool

	// pending counts notices being looked into (onNotify to its last
	// check): the notifier fd, drained, no longer shows them.
	pending atomic.Int32

	seen uint64 // kills already published; guarded by c.mu
}

// newOOMWatch prepares OOM watching for the container whose init is pid;
// start arms it. It is best effort: a host without a memory controller has
// no OOM events.
func (c *Container) newOOMWatch(pid int) *oomWatch {
	cg, err := oomSourceFor(pid)
	if err != nil {
		return nil
	}
	return c.newOOMWatchOn(cg)
}

// newOOMWatchOn prepares OOM watching on cg, found by a caller that made
// sure it is the container's (adoption, where init is not our child).
func (c *Container) newOOMWatchOn(cg oomSource) *oomWatch {
	w := &oomWatch{c: c, cg: cg, notice: oomNotice{fd: -1}}
	w.seen, _ = cg.oomKills()
	return w
}

// start registers the notifier. It runs once c.oom is set and the create
// event is out, so that no oom event can precede create.
func (w *oomWatch) start() {
	if w == nil {
		return
	}
	n, err := w.cg.oomNotifier()
	if err != nil {
		return // the exit-time checks still work
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		unix.Close(n.fd)
		return
	}
	if err := oomLoop.AddEvents(n.fd, n.events, w.onNotify); err != nil {
		unix.Close(n.fd)
		return
	}
	w.notice = n
}

// kills reads the OOM kill counter, through the notifier's fd when it can.
func (w *oomWatch) kills() (uint64, error) {
	w.mu.Lock()
	if !w.closed && w.notice.kills != nil {
		defer w.mu.Unlock()
		return w.notice.kills()
	}
	w.mu.Unlock()
	return w.cg.oomKills()
}

// mayHaveKilled reports whether an OOM kill may have been counted that no
// event reports yet, short of reading the counter: false only where a
// notice comes before every kill it announces (v1) and none is pending. A
// kill that is not a memory cgroup's OOM (the whole host's) raises no
// notice: callers ask only for processes that runckit SIGKILLed itself.
func (w *oomWatch) mayHaveKilled() bool {
	if w == nil {
		return false
	}
	if w.pending.Load() > 0 {
		return true
	}
	w.mu.Lock()
	n := w.notice
	w.mu.Unlock()
	if n.fd < 0 || !n.beforeKill {
		return true
	}
	fds := []unix.PollFd{{Fd: int32(n.fd), Events: int16(n.events)}}
	for {
		k, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err != nil || k > 0 || w.pending.Load() > 0
	}
}

func (w *oomWatch) onNotify() {
	w.pending.Add(1) // before the drain: mayHaveKilled sees one or the other
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.pending.Add(-1)
		return
	}
	w.notice.drain()
	w.mu.Unlock()
	w.c.mu.Lock()
	found := w.c.checkOOMLocked()
	w.c.mu.Unlock()
	if found {
		w.pending.Add(-1)
		w.c.saveRecord() // the record keeps the last event's Seq
		return
	}
	// v1 signals when the OOM starts, before the kill is counted: look
	// again once the killer has had time to act.
	time.AfterFunc(oomRecheckDelay, func() {
		w.c.mu.Lock()
		found := w.c.checkOOMLocked()
		w.c.mu.Unlock()
		w.pending.Add(-1)
		if found {
			w.c.saveRecord()
		}
	})
}

// oomRecheckDelay is how long after an OOM notification the kill counter
// is read again if it had not moved yet.
const oomRecheckDelay = 50 * time.Millisecond

// checkOOMLocked publishes an oom event if the kill counter has grown,
// and reports whether it did.
func (c *Container) checkOOMLocked() bool {
	w := c.oom
	if w == nil || c.deleted {
		return false
	}
	n, err := w.kills()
	if err != nil || n <= w.seen {
		return false
	}
	w.seen = n
	c.publishLocked(Event{Kind: EventOOM, Pid: c.init.pid})
	return true
}

// close stops the watch; safe on nil and more than once.
func (w *oomWatch) close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	if w.notice.fd >= 0 {
		oomLoop.Remove(w.notice.fd)
		unix.Close(w.notice.fd)
	}
}

func isUnifiedHost() bool { return cgroups.Mode() == cgroups.Unified }
