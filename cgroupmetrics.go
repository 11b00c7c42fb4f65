package runckit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// A container's cgroup figures, read from cgroupfs into the metrics types
// containerd uses (the protobuf types of github.com/containerd/cgroups/v3,
// which is all runckit takes from that module outside its tests). The
// module's cgroup managers would do the reading, but they bring eBPF,
// D-Bus and systemd libraries into every program that links runckit, and
// into every shim process: about 0.6 MB of code for figures that are a
// handful of text files. The fields are filled as containerd's cgroups
// library fills them (metrics_test.go holds the two side by side); a file
// that is missing (a controller not enabled, a kernel without it) leaves
// its fields zero, and one that can not be parsed is an error.

// readV1Metrics reads the v1 figures of the cgroup whose directory in each
// controller dirs gives ("memory" -> /sys/fs/cgroup/memory/x).
func readV1Metrics(dirs map[string]string) (*v1stats.Metrics, error) {
	m := &v1stats.Metrics{CPU: &v1stats.CPUStat{Throttling: &v1stats.Throttle{}, Usage: &v1stats.CPUUsage{}}}
	var errs []error
	read := func(ctrl string, f func(dir string) error) {
		if dir, ok := dirs[ctrl]; ok {
			if err := f(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cgroup v1 %s: %w", ctrl, err))
			}
		}
	}
	read("pids", func(dir string) error {
		m.Pids = &v1stats.PidsStat{}
		return firstErr(
			readUintFile(filepath.Join(dir, "pids.current"), 0, &m.Pids.Current),
			readUintFile(filepath.Join(dir, "pids.max"), 0, &m.Pids.Limit))
	})
	read("cpu", func(dir string) error {
		kv, err := readKVFile(filepath.Join(dir, "cpu.stat"))
		t := m.CPU.Throttling
		t.Periods, t.ThrottledPeriods, t.ThrottledTime = kv["nr_periods"], kv["nr_throttled"], kv["throttled_time"]
		return err
	})
	read("cpuacct", func(dir string) error { return readV1CPUAcct(dir, m.CPU.Usage) })
	read("memory", func(dir string) error { return readV1Memory(dir, m) })
	read("blkio", func(dir string) error {
		m.Blkio = &v1stats.BlkIOStat{}
		return readV1Blkio(dir, m.Blkio)
	})
	read("hugetlb", func(dir string) error {
		sizes, err := hugePageSizes(true)
		for _, size := range sizes {
			h := &v1stats.HugetlbStat{Pagesize: size}
			p := func(name string) string { return filepath.Join(dir, "hugetlb."+size+"."+name) }
			if err := firstErr(readUintFile(p("usage_in_bytes"), 0, &h.Usage), readUintFile(p("max_usage_in_bytes"), 0, &h.Max),
				readUintFile(p("failcnt"), 0, &h.Failcnt)); err != nil {
				return err
			}
			m.Hugetlb = append(m.Hugetlb, h)
		}
		return err
	})
	read("rdma", func(dir string) error {
		m.Rdma = &v1stats.RdmaStat{}
		cur, err1 := readRdma(filepath.Join(dir, "rdma.current"))
		max, err2 := readRdma(filepath.Join(dir, "rdma.max"))
		for _, e := range cur {
			m.Rdma.Current = append(m.Rdma.Current, &v1stats.RdmaEntry{Device: e.device, HcaHandles: e.handles, HcaObjects: e.objects})
		}
		for _, e := range max {
			m.Rdma.Limit = append(m.Rdma.Limit, &v1stats.RdmaEntry{Device: e.device, HcaHandles: e.handles, HcaObjects: e.objects})
		}
		return firstErr(err1, err2)
	})
	return m, errors.Join(errs...)
}

func readV1CPUAcct(dir string, u *v1stats.CPUUsage) error {
	kv, err := readKVFile(filepath.Join(dir, "cpuacct.stat"))
	if err != nil {
		return err
	}
	// cpuacct.stat counts clock ticks (USER_HZ, 100 on every Linux ABI).
	const nsPerTick = 1e9 / 100
	u.User, u.Kernel = kv["user"]*nsPerTick, kv["system"]*nsPerTick
	if err := readUintFile(filepath.Join(dir, "cpuacct.usage"), 0, &u.Total); err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage_percpu"))
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(data)) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return fmt.Errorf("cpuacct.usage_percpu: %w", err)
		}
		u.PerCPU = append(u.PerCPU, v)
	}
	return nil
}

func readV1Memory(dir string, m *v1stats.Metrics) error {
	kv, err := readKVFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return err
	}
	s := &v1stats.MemoryStat{
		Cache: kv["cache"], RSS: kv["rss"], RSSHuge: kv["rss_huge"], MappedFile: kv["mapped_file"],
		Dirty: kv["dirty"], Writeback: kv["writeback"], PgPgIn: kv["pgpgin"], PgPgOut: kv["pgpgout"],
		PgFault: kv["pgfault"], PgMajFault: kv["pgmajfault"], InactiveAnon: kv["inactive_anon"],
		ActiveAnon: kv["active_anon"], InactiveFile: kv["inactive_file"], ActiveFile: kv["active_file"],
		Unevictable:             kv["unevictable"],
		HierarchicalMemoryLimit: kv["hierarchical_memory_limit"],
		HierarchicalSwapLimit:   kv["hierarchical_memsw_limit"],
		TotalCache:              kv["total_cache"], TotalRSS: kv["total_rss"], TotalRSSHuge: kv["total_rss_huge"],
		TotalMappedFile: kv["total_mapped_file"], TotalDirty: kv["total_dirty"], TotalWriteback: kv["total_writeback"],
		TotalPgPgIn: kv["total_pgpgin"], TotalPgPgOut: kv["total_pgpgout"], TotalPgFault: kv["total_pgfault"],
		TotalPgMajFault: kv["total_pgmajfault"], TotalInactiveAnon: kv["total_inactive_anon"],
		TotalActiveAnon: kv["total_active_anon"], TotalInactiveFile: kv["total_inactive_file"],
		TotalActiveFile: kv["total_active_file"], TotalUnevictable: kv["total_unevictable"],
		Usage: &v1stats.MemoryEntry{}, Swap: &v1stats.MemoryEntry{}, Kernel: &v1stats.MemoryEntry{}, KernelTCP: &v1stats.MemoryEntry{},
	}
	m.Memory = s
	var errs []error
	for prefix, e := range map[string]*v1stats.MemoryEntry{"memory.": s.Usage, "memory.memsw.": s.Swap, "memory.kmem.": s.Kernel, "memory.kmem.tcp.": s.KernelTCP} {
		// Each file on its own: kernels drop kmem's limit files, swap
		// accounting may be off; what is there is still read.
		for name, v := range map[string]*uint64{"usage_in_bytes": &e.Usage, "max_usage_in_bytes": &e.Max, "failcnt": &e.Failcnt, "limit_in_bytes": &e.Limit} {
			if err := readUintFile(filepath.Join(dir, prefix+name), 0, v); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	oom, err := readKVFile(filepath.Join(dir, "memory.oom_control"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	m.MemoryOomControl = &v1stats.MemoryOomControl{OomKillDisable: oom["oom_kill_disable"], UnderOom: oom["under_oom"], OomKill: oom["oom_kill"]}
	// Missing files are left out of the error: the caller drops an error
	// that is ErrNotExist, which would hide the others joined with it.
	return errors.Join(errs...)
}

// readV1Blkio reads the CFQ (or BFQ) recursive counters, or, where no
// device of the cgroup uses such a scheduler, the throttle counters.
func readV1Blkio(dir string, b *v1stats.BlkIOStat) error {
	devices, err := blockDevices()
	if err != nil {
		return err
	}
	var n int
	if _, err := os.Lstat(filepath.Join(dir, "blkio.io_serviced_recursive")); err == nil {
		for _, f := range []struct {
			name  string
			entry *[]*v1stats.BlkIOEntry
		}{
			{"sectors_recursive", &b.SectorsRecursive},
			{"io_service_bytes_recursive", &b.IoServiceBytesRecursive},
			{"io_serviced_recursive", &b.IoServicedRecursive},
			{"io_queued_recursive", &b.IoQueuedRecursive},
			{"io_service_time_recursive", &b.IoServiceTimeRecursive},
			{"io_wait_time_recursive", &b.IoWaitTimeRecursive},
			{"io_merged_recursive", &b.IoMergedRecursive},
			{"time_recursive", &b.IoTimeRecursive},
		} {
			if err := readBlkioFile(filepath.Join(dir, "blkio."+f.name), devices, f.entry); err != nil {
				return err
			}
			n += len(*f.entry)
		}
	}
	if n > 0 {
		return nil
	}
	return firstErr(readBlkioFile(filepath.Join(dir, "blkio.throttle.io_serviced"), devices, &b.IoServicedRecursive),
		readBlkioFile(filepath.Join(dir, "blkio.throttle.io_service_bytes"), devices, &b.IoServiceBytesRecursive))
}

// readBlkioFile reads lines "major:minor [op] value"; the "Total" line is
// skipped.
func readBlkioFile(path string, devices map[[2]uint64]string, out *[]*v1stats.BlkIOEntry) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ':' })
		if len(f) == 0 || len(f) == 2 && f[0] == "Total" {
			continue
		}
		if len(f) < 3 {
			return fmt.Errorf("%s: line %q", path, line)
		}
		major, err1 := strconv.ParseUint(f[0], 10, 64)
		minor, err2 := strconv.ParseUint(f[1], 10, 64)
		op, val := "", f[2]
		if len(f) == 4 {
			op, val = f[2], f[3]
		}
		v, err3 := strconv.ParseUint(val, 10, 64)
		if err := firstErr(err1, err2, err3); err != nil {
			return fmt.Errorf("%s: line %q: %w", path, line, err)
		}
		*out = append(*out, &v1stats.BlkIOEntry{Device: devices[[2]uint64{major, minor}], Major: major, Minor: minor, Op: op, Value: v})
	}
	return nil
}

// blockDevices maps major:minor to /dev/<name> from /proc/partitions.
func blockDevices() (map[[2]uint64]string, error) {
	data, err := os.ReadFile("/proc/partitions")
	if err != nil {
		return nil, err
	}
	out := make(map[[2]uint64]string)
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i < 2 || len(f) < 4 {
			continue
		}
		major, err1 := strconv.ParseUint(f[0], 10, 64)
		minor, err2 := strconv.ParseUint(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if _, ok := out[[2]uint64{major, minor}]; !ok {
			out[[2]uint64{major, minor}] = filepath.Join("/dev", f[3])
		}
	}
	return out, nil
}

// readV2Metrics reads the figures of the cgroup v2 directory dir.
func readV2Metrics(dir string) (*v2stats.Metrics, error) {
	p := func(name string) string { return filepath.Join(dir, name) }
	var errs []error
	kvFile := func(name string) map[string]uint64 {
		kv, err := readKVFile(p(name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		return kv
	}
	num := func(name string) uint64 {
		var v uint64
		if err := readUintFile(p(name), math.MaxUint64, &v); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		return v
	}
	m := &v2stats.Metrics{Pids: &v2stats.PidsStat{Current: num("pids.current"), Limit: num("pids.max")}}

	c := kvFile("cpu.stat")
	m.CPU = &v2stats.CPUStat{
		UsageUsec: c["usage_usec"], UserUsec: c["user_usec"], SystemUsec: c["system_usec"],
		NrPeriods: c["nr_periods"], NrThrottled: c["nr_throttled"], ThrottledUsec: c["throttled_usec"],
		NrBursts: c["nr_bursts"], BurstUsec: c["burst_usec"], PSI: readPSI(p("cpu.pressure")),
	}
	s := kvFile("memory.stat")
	m.Memory = &v2stats.MemoryStat{
		Anon: s["anon"], File: s["file"], KernelStack: s["kernel_stack"], Slab: s["slab"], Sock: s["sock"],
		Shmem: s["shmem"], FileMapped: s["file_mapped"], FileDirty: s["file_dirty"], FileWriteback: s["file_writeback"],
		AnonThp: s["anon_thp"], InactiveAnon: s["inactive_anon"], ActiveAnon: s["active_anon"],
		InactiveFile: s["inactive_file"], ActiveFile: s["active_file"], Unevictable: s["unevictable"],
		SlabReclaimable: s["slab_reclaimable"], SlabUnreclaimable: s["slab_unreclaimable"],
		Pgfault: s["pgfault"], Pgmajfault: s["pgmajfault"], WorkingsetRefault: s["workingset_refault"],
		WorkingsetActivate: s["workingset_activate"], WorkingsetNodereclaim: s["workingset_nodereclaim"],
		Pgrefill: s["pgrefill"], Pgscan: s["pgscan"], Pgsteal: s["pgsteal"], Pgactivate: s["pgactivate"],
		Pgdeactivate: s["pgdeactivate"], Pglazyfree: s["pglazyfree"], Pglazyfreed: s["pglazyfreed"],
		ThpFaultAlloc: s["thp_fault_alloc"], ThpCollapseAlloc: s["thp_collapse_alloc"],
		Usage: num("memory.current"), UsageLimit: num("memory.max"), MaxUsage: num("memory.peak"),
		SwapUsage: num("memory.swap.current"), SwapLimit: num("memory.swap.max"), SwapMaxUsage: num("memory.swap.peak"),
		PSI: readPSI(p("memory.pressure")),
	}
	if ev := kvFile("memory.events"); len(ev) > 0 {
		m.MemoryEvents = &v2stats.MemoryEvents{Low: ev["low"], High: ev["high"], Max: ev["max"], Oom: ev["oom"], OomKill: ev["oom_kill"], OomGroupKill: ev["oom_group_kill"]}
	}
	io, err := readIOStat(p("io.stat"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	m.Io = &v2stats.IOStat{Usage: io, PSI: readPSI(p("io.pressure"))}
	m.Rdma = &v2stats.RdmaStat{Current: []*v2stats.RdmaEntry{}, Limit: []*v2stats.RdmaEntry{}}
	for file, out := range map[string]*[]*v2stats.RdmaEntry{"rdma.current": &m.Rdma.Current, "rdma.max": &m.Rdma.Limit} {
		es, err := readRdma(p(file))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, e := range es {
			*out = append(*out, &v2stats.RdmaEntry{Device: e.device, HcaHandles: e.handles, HcaObjects: e.objects})
		}
	}
	sizes, err := hugePageSizes(false)
	if err != nil {
		errs = append(errs, err)
	}
	m.Hugetlb = make([]*v2stats.HugeTlbStat, 0, len(sizes))
	for _, size := range sizes {
		ev := kvFile("hugetlb." + size + ".events")
		m.Hugetlb = append(m.Hugetlb, &v2stats.HugeTlbStat{
			Max: num("hugetlb." + size + ".max"), Current: num("hugetlb." + size + ".current"), Pagesize: size, Failcnt: ev["max"],
		})
	}
	return m, errors.Join(errs...)
}

// readIOStat reads io.stat: "major:minor rbytes=N wbytes=N rios=N wios=N ...".
func readIOStat(path string) ([]*v2stats.IOEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*v2stats.IOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		maj, min, ok := strings.Cut(f[0], ":")
		major, err1 := strconv.ParseUint(maj, 10, 64)
		minor, err2 := strconv.ParseUint(min, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return out, fmt.Errorf("%s: line %q", path, line)
		}
		e := &v2stats.IOEntry{Major: major, Minor: minor}
		for _, kv := range f[1:] {
			k, val, _ := strings.Cut(kv, "=")
			v, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				continue // a key of another kind (cost.*, dbytes) or none
			}
			switch k {
			case "rbytes":
				e.Rbytes = v
			case "wbytes":
				e.Wbytes = v
			case "rios":
				e.Rios = v
			case "wios":
				e.Wios = v
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// readPSI reads a pressure file ("some avg10=0.00 avg60=0.00 avg300=0.00
// total=0", and a "full" line); nil where the kernel has no PSI.
func readPSI(path string) *v2stats.PSIStats {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil // ENOENT, or EOPNOTSUPP with psi=0
	}
	out := &v2stats.PSIStats{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		d := &v2stats.PSIData{}
		switch f[0] {
		case "some":
			out.Some = d
		case "full":
			out.Full = d
		default:
			continue
		}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			var err error
			switch k {
			case "avg10":
				d.Avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				d.Avg60, err = strconv.ParseFloat(v, 64)
			case "avg300":
				d.Avg300, err = strconv.ParseFloat(v, 64)
			case "total":
				d.Total, err = strconv.ParseUint(v, 10, 64)
			}
			if err != nil {
				return nil
			}
		}
	}
	return out
}

type rdmaEntry struct {
	device           string
	handles, objects uint32
}

// readRdma reads rdma.current or rdma.max: "dev hca_handle=N hca_object=N"
// ("max" is the largest uint32).
func readRdma(path string) ([]rdmaEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []rdmaEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		e := rdmaEntry{device: f[0]}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n := uint64(math.MaxUint32)
			if v != "max" {
				if n, err = strconv.ParseUint(v, 10, 32); err != nil {
					continue
				}
			}
			switch k {
			case "hca_handle":
				e.handles = uint32(n)
			case "hca_object":
				e.objects = uint32(n)
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// hugePageSizes names the host's huge page sizes as the hugetlb
// controller's files do ("2MB", "1GB"), from /sys/kernel/mm/hugepages: in
// name order when sorted, else in the directory's own order (containerd's
// library lists them sorted for v1 and unsorted for v2, and the metrics
// keep that order).
func hugePageSizes(sorted bool) ([]string, error) {
	d, err := os.Open("/sys/kernel/mm/hugepages")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(0)
	d.Close()
	if err != nil {
		return nil, err
	}
	if sorted {
		slices.Sort(names)
	}
	var out []string
	for _, name := range names {
		kb, ok := strings.CutPrefix(name, "hugepages-")
		kb, ok2 := strings.CutSuffix(kb, "kB")
		n, err := strconv.ParseUint(kb, 10, 64)
		if !ok || !ok2 || err != nil {
			continue
		}
		out = append(out, hugePageName(n*1024))
	}
	return out, nil
}

// hugePageName is the kernel's name for a huge page of size bytes.
func hugePageName(size uint64) string {
	units := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	i := 0
	for size >= 1024 && size%1024 == 0 && i < len(units)-1 {
		size /= 1024
		i++
	}
	return strconv.FormatUint(size, 10) + units[i]
}

// readUintFile reads a file holding one number; "max" reads as max.
// Negative numbers (v1's -1 for "no limit" in some files) read as 0.
func readUintFile(path string, max uint64, v *uint64) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(bytes.TrimSpace(data))
	if s == "max" {
		*v = max
		return nil
	}
	n, err := parseCgroupUint(s)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	*v = n
	return nil
}

// readKVFile reads a file of "key value" lines (cpu.stat, memory.stat,
// memory.events).
func readKVFile(path string) (map[string]uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseKV(data, path)
}

// parseKV parses "key value" lines; what it read before a malformed line
// is returned with the error.
func parseKV(data []byte, path string) (map[string]uint64, error) {
	out := make(map[string]uint64)
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return out, fmt.Errorf("%s: line %q: want \"key value\"", path, line)
		}
		v, err := parseCgroupUint(fields[1])
		if err != nil {
			return out, fmt.Errorf("%s: %w", path, err)
		}
		out[fields[0]] = v
	}
	return out, nil
}

// parseCgroupUint parses a counter; a negative value reads as 0.
func parseCgroupUint(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err == nil {
		return v, nil
	}
	if i, ierr := strconv.ParseInt(s, 10, 64); ierr == nil && i < 0 || errors.Is(ierr, strconv.ErrRange) && strings.HasPrefix(s, "-") {
		return 0, nil
	}
	return 0, err
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
