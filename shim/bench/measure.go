package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// results is results.json.
type results struct {
	Meta    meta     `json:"meta"`
	Records []record `json:"records"`
}

type meta struct {
	Date         string   `json:"date"`
	Containerd   string   `json:"containerd"`
	Runc         string   `json:"runc"`
	Go           string   `json:"go"`
	Kernel       string   `json:"kernel"`
	CPUs         int      `json:"cpus"`
	Rounds       int      `json:"rounds"`
	Quick        bool     `json:"quick,omitempty"`
	LoadStart    string   `json:"loadavg_start"`
	LoadPerRound []string `json:"loadavg_per_round"`
	LoadEnd      string   `json:"loadavg_end"`
	ElapsedS     float64  `json:"elapsed_s"`
	Method       string   `json:"method"`
	Build        string   `json:"build"`
}

// record is one measurement: medians over rounds, in seconds.
type record struct {
	Name     string `json:"name"`
	N        int    `json:"n"`
	Parallel int    `json:"parallel,omitempty"`
	Rounds   int    `json:"rounds"`

	StockS         float64 `json:"stock_s,omitempty"`
	RunckitS       float64 `json:"runckit_s,omitempty"`
	FloorS         float64 `json:"floor_s,omitempty"`
	RunckitVsStock float64 `json:"runckit_vs_stock,omitempty"`
	StockVsFloor   float64 `json:"stock_vs_floor,omitempty"`
	RunckitVsFloor float64 `json:"runckit_vs_floor,omitempty"`

	Mode    string     `json:"mode,omitempty"`
	Stock   *rssResult `json:"stock,omitempty"`
	Runckit *rssResult `json:"runckit,omitempty"`

	Target string               `json:"target"`
	Met    bool                 `json:"met"`
	Sample map[string][]float64 `json:"samples"`
	Note   string               `json:"note"`
}

// buildNote says how the two shims were built.
func buildNote(cfg config) string {
	if cfg.static {
		return "both shims CGO_ENABLED=0 (static), as containerd's Makefile builds shims; stock from the module cache at " + ctrdVersion
	}
	return "toolchain defaults (cgo on: dynamically linked against libc); stock shim found next to containerd or on PATH"
}

func measure(ctx context.Context, cfg config, d *daemon, stock, rk *shimSide, floor *floorSide) (*results, error) {
	res := &results{Meta: meta{
		Date:       time.Now().UTC().Format(time.RFC3339),
		Containerd: cmdOut(cfg.containerd, "--version"),
		Runc:       firstLine(cmdOut(floor.runc.Command, "--version")),
		Go:         goVersion(),
		Kernel:     kernel(),
		CPUs:       cpus(),
		Rounds:     cfg.rounds,
		Quick:      cfg.quick,
		LoadStart:  loadavg(),
		Build:      buildNote(cfg),
		Method: "containerd's Go client (NullIO, Wait before Start) against a containerd the bench starts; " +
			"stock = io.containerd.runc.v2 (containerd-shim-runc-v2 v2.4.2), runckit = io.containerd.runckit.v1 built from this tree; " +
			"floor = go-runc on the same runc with containerd's default spec; rounds interleaved, the side that goes first rotating; medians",
	}}
	t0 := time.Now()
	sides := []named{{"stock", stock}, {"runckit", rk}, {"floor", floor}}
	order := func(r int) []named {
		o := append(slices.Clone(sides[r%3:]), sides[:r%3]...)
		return o
	}

	doBurst, doSeq, doPar, doRSS := cfg.runs("exec-burst"), cfg.runs("lifecycle-seq"), cfg.runs("lifecycle-par"), cfg.runs("rss")
	if doBurst {
		for _, s := range []interface{ setupBurst(context.Context) error }{stock, rk, floor} {
			if err := s.setupBurst(ctx); err != nil {
				return res, fmt.Errorf("burst container: %w", err)
			}
		}
		defer func() {
			cctx := context.WithoutCancel(ctx)
			for _, err := range []error{stock.teardownBurst(cctx), rk.teardownBurst(cctx), floor.teardownBurst(cctx)} {
				if err != nil {
					log.Print(err)
				}
			}
		}()
	}
	// Warm-up (untimed): page cache, binaries, containerd's and the shims'
	// first-use paths.
	log.Print("warm-up")
	for _, s := range sides {
		if doBurst {
			if _, err := s.s.burst(ctx, -1, 2); err != nil {
				return res, fmt.Errorf("warm-up %s: %w", s.name, err)
			}
		}
		if doSeq || doPar {
			if _, err := s.s.lifecycle(ctx, -1, 2, 1); err != nil {
				return res, fmt.Errorf("warm-up %s: %w", s.name, err)
			}
		}
	}

	samples := map[string]map[string][]time.Duration{} // measurement -> side -> per round
	add := func(key, side string, d time.Duration) {
		if samples[key] == nil {
			samples[key] = map[string][]time.Duration{}
		}
		samples[key][side] = append(samples[key][side], d)
	}
	rssKeys := []bool{false, true}
	rssRes := map[bool]map[string][]rssResult{false: {}, true: {}}

	// summarize turns the rounds done so far into records; it runs after
	// every round so that an interrupted run still leaves its results.
	summarize := func(done int) {
		res.Records = nil
		cfg := cfg
		cfg.rounds = done
		res.Meta.Rounds = done
		res.Meta.LoadEnd = loadavg()
		res.Meta.ElapsedS = time.Since(t0).Seconds()

		if doBurst {
			for _, n := range cfg.burstNs {
				rec := timeRecord("exec-burst", n, 0, cfg.rounds, samples[fmt.Sprintf("exec-burst/%d", n)])
				rec.Target = "runckit_vs_stock <= 1 (no slower than the stock shim)"
				rec.Met = rec.RunckitVsStock <= 1
				rec.Note = fmt.Sprintf("%d concurrent execs of `true` in one running task: Exec, Wait, Start each, wall time until all exited (exec Delete untimed); floor: %d concurrent foreground `runc exec` in a go-runc container", n, n)
				res.Records = append(res.Records, rec)
			}
		}
		if doSeq {
			rec := timeRecord("lifecycle-seq", cfg.lcSeq, 1, cfg.rounds, samples["lifecycle-seq"])
			rec.Target = "runckit_vs_stock <= 0.8"
			rec.Met = rec.RunckitVsStock <= 0.8
			rec.Note = "containers of `true` one after another: NewContainer (snapshot, spec) + NewTask + Wait + Start + exit + task Delete + container Delete; floor: write config.json + runc create/start/wait4/delete"
			res.Records = append(res.Records, rec)
		}
		if doPar {
			rec := timeRecord("lifecycle-par", cfg.lcPar, cfg.lcParWidth, cfg.rounds, samples["lifecycle-par"])
			rec.Target = "runckit_vs_stock <= 0.8"
			rec.Met = rec.RunckitVsStock <= 0.8
			rec.Note = fmt.Sprintf("as lifecycle-seq, %d at a time", cfg.lcParWidth)
			res.Records = append(res.Records, rec)
		}
		if doRSS {
			for _, group := range rssKeys {
				rec := record{Name: "rss", N: cfg.rssN, Rounds: cfg.rounds, Sample: map[string][]float64{}}
				if group {
					rec.Mode = "grouped"
					rec.Note = fmt.Sprintf("%d running `sleep` containers with the annotation io.containerd.runc.v2.group (both shims honour it): one shim process per runtime; sum of the shims' RSS (and PSS) / containers, %v after the last start", cfg.rssN, rssSettle)
				} else {
					rec.Mode = "per-container"
					rec.Note = fmt.Sprintf("%d running `sleep` containers as containerd's client makes them by default (no group label): one shim process per container for both runtimes; sum of the shims' RSS (and PSS) / containers, %v after the last start", cfg.rssN, rssSettle)
				}
				for _, name := range []string{"stock", "runckit"} {
					rs := rssRes[group][name]
					m := medianRSS(rs)
					for _, x := range rs {
						rec.Sample[name] = append(rec.Sample[name], x.RSSKiB)
					}
					if name == "stock" {
						rec.Stock = &m
					} else {
						rec.Runckit = &m
					}
				}
				rec.Target = "runckit RSS per container < stock's"
				rec.Met = rec.Runckit.RSSKiB < rec.Stock.RSSKiB
				if rec.Stock.RSSKiB > 0 {
					rec.RunckitVsStock = rec.Runckit.RSSKiB / rec.Stock.RSSKiB
				}
				res.Records = append(res.Records, rec)
			}
		}
	}
	for r := 0; r < cfg.rounds; r++ {
		if r > 0 {
			summarize(r)
			if err := writeJSON(cfg.out, res); err != nil {
				log.Print(err)
			}
		}
		res.Meta.LoadPerRound = append(res.Meta.LoadPerRound, loadavg())
		o := order(r)
		log.Printf("round %d/%d (first: %s; load %s)", r+1, cfg.rounds, o[0].name, loadavg())
		if doBurst {
			for _, s := range []*shimSide{stock, rk} {
				if err := s.burstAlive(ctx); err != nil {
					return res, err
				}
			}
			for _, n := range cfg.burstNs {
				var line []string
				for _, s := range o {
					dur, err := s.s.burst(ctx, r, n)
					if err != nil {
						return res, fmt.Errorf("exec burst %d, %s: %w", n, s.name, err)
					}
					add(fmt.Sprintf("exec-burst/%d", n), s.name, dur)
					line = append(line, fmt.Sprintf("%s %v", s.name, dur.Round(time.Millisecond)))
				}
				log.Printf("  exec burst %-4d %s", n, strings.Join(line, ", "))
			}
		}
		for _, lc := range []struct {
			on       bool
			name     string
			n, width int
		}{{doSeq, "lifecycle-seq", cfg.lcSeq, 1}, {doPar, "lifecycle-par", cfg.lcPar, cfg.lcParWidth}} {
			if !lc.on {
				continue
			}
			var line []string
			for _, s := range o {
				dur, err := s.s.lifecycle(ctx, r, lc.n, lc.width)
				if err != nil {
					return res, fmt.Errorf("%s, %s: %w", lc.name, s.name, err)
				}
				add(lc.name, s.name, dur)
				line = append(line, fmt.Sprintf("%s %v", s.name, dur.Round(time.Millisecond)))
			}
			log.Printf("  %s %d x%d: %s", lc.name, lc.n, lc.width, strings.Join(line, ", "))
			for _, s := range []*shimSide{stock, rk} {
				s.mu.Lock()
				log.Printf("    %-7s per container: %v", s.name, s.steps[len(s.steps)-1])
				s.mu.Unlock()
			}
		}
		if doRSS {
			for _, group := range rssKeys {
				shims := []*shimSide{stock, rk}
				if r%2 == 1 {
					shims = []*shimSide{rk, stock}
				}
				var line []string
				for _, s := range shims {
					bin := stockShim
					if s == rk {
						bin = runckitShim
					}
					rr, err := s.rss(ctx, r, cfg.rssN, group, bin)
					if err != nil {
						return res, fmt.Errorf("rss %s: %w", s.name, err)
					}
					rssRes[group][s.name] = append(rssRes[group][s.name], rr)
					line = append(line, fmt.Sprintf("%s %.0f KiB RSS/container (%d shims)", s.name, rr.RSSKiB, rr.Shims))
				}
				log.Printf("  rss %d containers, grouped=%v: %s", cfg.rssN, group, strings.Join(line, ", "))
			}
		}
	}
	summarize(cfg.rounds)
	return res, nil
}

func timeRecord(name string, n, par, rounds int, s map[string][]time.Duration) record {
	rec := record{Name: name, N: n, Parallel: par, Rounds: rounds, Sample: map[string][]float64{}}
	st, rk, fl := median(s["stock"]), median(s["runckit"]), median(s["floor"])
	rec.StockS, rec.RunckitS, rec.FloorS = st.Seconds(), rk.Seconds(), fl.Seconds()
	if st > 0 {
		rec.RunckitVsStock = float64(rk) / float64(st)
	}
	if fl > 0 {
		rec.StockVsFloor = float64(st) / float64(fl)
		rec.RunckitVsFloor = float64(rk) / float64(fl)
	}
	for side, ds := range s {
		for _, d := range ds {
			rec.Sample[side] = append(rec.Sample[side], round3(d.Seconds()))
		}
	}
	return rec
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianRSS(rs []rssResult) rssResult {
	if len(rs) == 0 {
		return rssResult{}
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b rssResult) int {
		switch {
		case a.RSSKiB < b.RSSKiB:
			return -1
		case a.RSSKiB > b.RSSKiB:
			return 1
		}
		return 0
	})
	return s[(len(s)-1)/2]
}

func printTable(w io.Writer, res *results) {
	if res == nil || len(res.Records) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-15s %5s %8s %9s %9s %9s %8s %8s %8s %s\n", "measurement", "n", "parallel", "stock", "runckit", "floor", "rk/stock", "st/floor", "rk/floor", "target")
	for _, r := range res.Records {
		if r.Name == "rss" {
			fmt.Fprintf(w, "%-15s %5d %8s %7.0fKi %7.0fKi %9s %8.2f %8s %8s %s (%s: %d vs %d shims; PSS %.0f vs %.0f KiB)\n",
				"rss/"+r.Mode, r.N, "", r.Stock.RSSKiB, r.Runckit.RSSKiB, "", r.RunckitVsStock, "", "", met(r.Met),
				r.Mode, r.Stock.Shims, r.Runckit.Shims, r.Stock.PSSKiB, r.Runckit.PSSKiB)
			continue
		}
		fmt.Fprintf(w, "%-15s %5d %8d %8.3fs %8.3fs %8.3fs %8.2f %8.2f %8.2f %s\n",
			r.Name, r.N, max(r.Parallel, 1), r.StockS, r.RunckitS, r.FloorS, r.RunckitVsStock, r.StockVsFloor, r.RunckitVsFloor, met(r.Met))
	}
	fmt.Fprintf(w, "\nload average: start %s, per round %s, end %s; %d round(s), %s\n",
		res.Meta.LoadStart, strings.Join(res.Meta.LoadPerRound, " | "), res.Meta.LoadEnd, res.Meta.Rounds,
		(time.Duration(res.Meta.ElapsedS * float64(time.Second))).Round(time.Second))
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// gatedBurst runs n copies of one(i) at once and returns the wall time
// until the last returned; the goroutines are ready before the clock starts.
func gatedBurst(n int, one func(i int) error) (time.Duration, error) {
	gate := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			errs[i] = one(i)
		}()
	}
	t0 := time.Now()
	close(gate)
	wg.Wait()
	return time.Since(t0), errors.Join(errs...)
}

// parallelDo calls f(0..n-1), width at a time, and returns the first error;
// after an error no new calls start.
func parallelDo(ctx context.Context, n, width int, f func(i int) error) error {
	width = max(width, 1)
	next := make(chan int)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	failed := make(chan struct{})
	for w := 0; w < width && w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
						close(failed)
					}
					mu.Unlock()
				}
			}
		}()
	}
loop:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-failed:
			break loop
		case <-ctx.Done():
			mu.Lock()
			if first == nil {
				first = ctx.Err()
			}
			mu.Unlock()
			break loop
		}
	}
	close(next)
	wg.Wait()
	return first
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func cpus() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0
	}
	return set.Count()
}
