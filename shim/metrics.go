package runckitshim

import (
	"time"

	"github.com/containerd/cgroups/v3"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"

	"github.com/runckit/runckit"
)

// metrics is the metrics type containerd expects for the host's cgroup
// version: runckit's Raw figures, which are that type, or, should they be
// missing, runckit's Stats put into it.
func metrics(st *runckit.Stats) any {
	switch raw := st.Raw.(type) {
	case *v1stats.Metrics:
		return raw
	case *v2stats.Metrics:
		return raw
	}
	if cgroups.Mode() == cgroups.Unified {
		return &v2stats.Metrics{
			Pids: &v2stats.PidsStat{Current: st.Pids.Current, Limit: st.Pids.Limit},
			CPU: &v2stats.CPUStat{
				UsageUsec:     st.CPU.UsageNanos / 1000,
				UserUsec:      st.CPU.UserNanos / 1000,
				SystemUsec:    st.CPU.SystemNanos / 1000,
				NrPeriods:     st.CPU.Periods,
				NrThrottled:   st.CPU.ThrottledPeriods,
				ThrottledUsec: st.CPU.ThrottledNanos / 1000,
			},
			Memory: &v2stats.MemoryStat{
				Usage:      st.Memory.Usage,
				UsageLimit: st.Memory.Limit,
				File:       st.Memory.Cache,
				Anon:       st.Memory.RSS,
				SwapUsage:  st.Memory.Swap,
			},
			MemoryEvents: &v2stats.MemoryEvents{OomKill: st.Memory.OOMKills},
		}
	}
	return &v1stats.Metrics{
		Pids: &v1stats.PidsStat{Current: st.Pids.Current, Limit: st.Pids.Limit},
		CPU: &v1stats.CPUStat{
			Usage: &v1stats.CPUUsage{Total: st.CPU.UsageNanos, User: st.CPU.UserNanos, Kernel: st.CPU.SystemNanos},
			Throttling: &v1stats.Throttle{
				Periods:          st.CPU.Periods,
				ThrottledPeriods: st.CPU.ThrottledPeriods,
				ThrottledTime:    st.CPU.ThrottledNanos,
			},
		},
		Memory: &v1stats.MemoryStat{
			Cache:      st.Memory.Cache,
			RSS:        st.Memory.RSS,
			TotalCache: st.Memory.Cache,
			TotalRSS:   st.Memory.RSS,
			Usage:      &v1stats.MemoryEntry{Usage: st.Memory.Usage, Limit: st.Memory.Limit, Max: st.Memory.MaxUsage},
			Swap:       &v1stats.MemoryEntry{Usage: st.Memory.Swap},
		},
	}
}

func timeNow() time.Time { return time.Now() }
