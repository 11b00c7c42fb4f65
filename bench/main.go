// Command bench measures runckit against the raw runc floor: the same runc
// binary, driven through go-runc with no runckit code in the path, on the
// same runtime root and (for execs) the same container. Measurements are
// interleaved round by round in one run and reported as medians.
//
//	go run ./bench            # full run: 5 rounds, writes bench/results.json and docs/exec-burst.svg
//	go run ./bench -quick     # a smoke run of every measurement, well under a minute
//
// It needs root, runc and busybox-static, like the runckit tests.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

type config struct {
	quick  bool
	rounds int
	out    string
	svg    string

	burstNs     []int // concurrent execs per burst
	lcSeq       int   // lifecycles in sequence
	lcPar       int   // lifecycles run ...
	lcParWidth  int   // ... this many at a time
	latProcs    int   // live execs killed in one burst
	latConts    int   // spread over this many containers
	scale       int   // live containers
	heavyRounds int   // rounds of the exit-latency and scale measurements (the slowest)
	parallel    int   // concurrency for setup and the scale creation
	lcN         int   // -lifecycles: overrides lcSeq and lcPar
	merge       bool  // -merge: records join those already in out
	only        onlyFlag
	readme      string // README whose results block is rewritten; "" for none
}

// measurements are the names -only takes, in the order they run.
var measurements = []string{"exec-burst", "lifecycle-seq", "lifecycle-par", "exit-latency", "scale-create"}

// onlyFlag is the repeatable -only NAME.
type onlyFlag map[string]bool

func (o onlyFlag) String() string { return fmt.Sprint(map[string]bool(o)) }

func (o onlyFlag) Set(v string) error {
	for _, m := range measurements {
		if m == v {
			o[v] = true
			return nil
		}
	}
	return fmt.Errorf("unknown measurement %q (have %v)", v, measurements)
}

// want reports whether measurement name runs.
func (c *config) want(name string) bool { return len(c.only) == 0 || c.only[name] }

func main() {
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	cfg := config{only: onlyFlag{}}
	flag.Var(cfg.only, "only", "run only this measurement (repeatable): "+strings.Join(measurements, ", "))
	flag.StringVar(&cfg.readme, "readme", "README.md", "README whose bench results block is rewritten (\"\" for none; not with -quick or -only unless given)")
	flag.BoolVar(&cfg.quick, "quick", false, "small sizes and 1 round: a smoke test that finishes in well under a minute")
	flag.IntVar(&cfg.rounds, "rounds", 0, "rounds of each measurement (default 5, 1 with -quick)")
	flag.StringVar(&cfg.out, "out", "bench/results.json", "where to write the JSON results (with -quick: a file in $TMPDIR unless given)")
	flag.StringVar(&cfg.svg, "svg", "docs/exec-burst.svg", "where to write the exec-burst chart (with -quick: a file in $TMPDIR unless given)")
	flag.IntVar(&cfg.scale, "scale", 0, "live containers in the scale measurement (default 1000, 5 with -quick; -only scale-create -scale 5000 for the large run)")
	flag.IntVar(&cfg.heavyRounds, "heavy-rounds", 0, "rounds of the exit-latency and scale measurements, run in the first rounds (default 1; each takes minutes at full size)")
	flag.IntVar(&cfg.lcN, "lifecycles", 0, "lifecycles in lifecycle-seq and lifecycle-par (default 50 and 200)")
	flag.IntVar(&cfg.latProcs, "latency-procs", 0, "live execs killed in the exit-latency burst (default 1000, 20 with -quick)")
	flag.BoolVar(&cfg.merge, "merge", false, "merge the records into -out (same measurement and size replaced) instead of overwriting it, e.g. -only scale-create -scale 5000 -merge")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
	flag.BoolVar(&burstRealtime, "rt", false, "run the exit-latency burst with this program's threads at SCHED_FIFO (priority 10): separates runckit's exit path from the kernel's scheduler placing 1,000 dying processes ahead of it")
	flag.IntVar(&burstNice, "nice", 0, "run the exit-latency burst with this program's threads at this nice value (SCHED_NORMAL; -20 is the highest weight)")
	flag.DurationVar(&burstSlice, "slice", 0, "run the exit-latency burst with this program's threads asking the scheduler for this slice (EEVDF's sched_runtime, 0.1ms-100ms; shorter is an earlier deadline)")
	flag.StringVar(&burstTrace, "trace", "", "write a runtime execution trace of each exit-latency burst, from the first kill to the last exit event, to this file (go tool trace)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
	}

	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		// A smoke run must not overwrite the committed full results.
		if !set["out"] {
			cfg.out = filepath.Join(os.TempDir(), "runckit-bench-quick.json")
		}
		if !set["svg"] {
			cfg.svg = filepath.Join(os.TempDir(), "runckit-bench-quick.svg")
		}
		if !set["readme"] {
			cfg.readme = ""
		}
		cfg.burstNs = []int{1, 2}
		cfg.lcSeq, cfg.lcPar, cfg.lcParWidth = 3, 4, 2
		cfg.latConts = 2
		setDefault(&cfg.latProcs, 20)
		setDefault(&cfg.scale, 5)
		setDefault(&cfg.rounds, 1)
	} else {
		cfg.burstNs = []int{1, 10, 50, 200}
		cfg.lcSeq, cfg.lcPar, cfg.lcParWidth = 50, 200, 8
		cfg.latConts = 10
		setDefault(&cfg.latProcs, 1000)
		setDefault(&cfg.scale, 1000)
		setDefault(&cfg.rounds, 5)
	}
	if len(cfg.only) > 0 && !set["readme"] {
		cfg.readme = "" // a partial run does not rewrite the README's table
	}
	if cfg.lcN > 0 {
		cfg.lcSeq, cfg.lcPar = cfg.lcN, cfg.lcN
	}
	setDefault(&cfg.heavyRounds, 1)
	cfg.heavyRounds = min(cfg.heavyRounds, cfg.rounds)
	cfg.parallel = 8
	if cfg.rounds < 1 || cfg.heavyRounds < 1 || cfg.scale < 1 || cfg.latProcs < 1 {
		log.Fatal("-rounds, -heavy-rounds, -scale and -latency-procs must be at least 1")
	}
	if cfg.latProcs < cfg.latConts {
		cfg.latConts = cfg.latProcs
	}

	code := run(cfg)
	pprof.StopCPUProfile() // a no-op without -cpuprofile
	os.Exit(code)
}

func setDefault(v *int, d int) {
	if *v == 0 {
		*v = d
	}
}

func run(cfg config) (code int) {
	if err := runckittest.Check(); err != nil {
		log.Printf("cannot run containers here: %v", err)
		return 1
	}
	// The floor waits for its containers' init processes with wait4, which
	// needs them re-parented to this program when runc create exits.
	// runckit makes the program a child subreaper too; doing it up front
	// makes the floor independent of whether runckit ran first.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Printf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
		return 1
	}

	timeout := 45 * time.Minute
	if cfg.quick {
		timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := newEnv()
	if err != nil {
		log.Print(err)
		return 1
	}
	// Runs last: deletes every container still tracked and anything else
	// left in the private runtime root, then removes the work directory.
	defer func() {
		if err := env.close(); err != nil {
			log.Print(err)
			code = 1
		}
	}()

	start := time.Now()
	res, err := runAll(ctx, cfg, env)
	elapsed := time.Since(start)
	printTable(os.Stdout, res)
	fmt.Printf("\n%d round(s), %s total\n", cfg.rounds, elapsed.Round(time.Second))
	if cfg.merge && len(res.records) > 0 {
		merged, merr := mergeResults(cfg.out, res.records)
		if merr != nil {
			log.Print(merr)
			return 1
		}
		res.records = merged
	}
	if len(res.records) > 0 {
		if werr := writeResults(cfg.out, res.records); werr != nil {
			log.Print(werr)
			code = 1
		} else {
			fmt.Printf("results: %s\n", cfg.out)
		}
	}
	if cfg.readme != "" && len(res.records) > 0 && err == nil {
		if werr := updateReadme(cfg.readme, res.records); werr != nil {
			log.Print(werr)
			code = 1
		} else {
			fmt.Printf("table:   %s\n", cfg.readme)
		}
	}
	if len(res.burst) > 0 {
		if werr := writeSVG(cfg.svg, res.burst); werr != nil {
			log.Print(werr)
			code = 1
		} else {
			fmt.Printf("chart:   %s\n", cfg.svg)
		}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			log.Print("interrupted")
		}
		log.Print(err)
		return 1
	}
	return code
}

// results collects what the run measured.
type results struct {
	records []record
	burst   []burstPoint // for the chart
}

// record is one measurement in results.json.
type record struct {
	Name     string  `json:"name"`
	N        int     `json:"n"`
	Parallel int     `json:"parallel,omitempty"`
	Rounds   int     `json:"rounds"`
	RunckitS float64 `json:"runckit_s"`
	FloorS   float64 `json:"floor_s,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`

	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	MaxMs float64 `json:"max_ms,omitempty"`

	// RunckitPhasesMs and FloorPhasesMs break a lifecycle down: the mean
	// milliseconds per lifecycle in each phase (median over rounds). The
	// runckit phases are measured inside the library (internal/phase);
	// "own" is the sum of the phases that are not runc invocations.
	RunckitPhasesMs map[string]float64 `json:"runckit_phases_ms,omitempty"`
	FloorPhasesMs   map[string]float64 `json:"floor_phases_ms,omitempty"`

	HeapBytesPerContainer  float64 `json:"heap_bytes_per_container,omitempty"`
	GoroutinesPerContainer float64 `json:"goroutines_per_container,omitempty"`
	FdsPerContainer        float64 `json:"fds_per_container,omitempty"`

	Note string `json:"note,omitempty"`
}

type burstPoint struct {
	n              int
	runckit, floor time.Duration
}

// mergeResults reads the records in path and puts recs among them: a
// record of the same measurement and size is replaced, a new one appended.
func mergeResults(path string, recs []record) ([]record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-merge: %w", err)
	}
	var old []record
	if err := json.Unmarshal(data, &old); err != nil {
		return nil, fmt.Errorf("-merge: %s: %w", path, err)
	}
	for _, r := range recs {
		i := slices.IndexFunc(old, func(o record) bool { return o.Name == r.Name && o.N == r.N })
		if i >= 0 {
			old[i] = r
		} else {
			old = append(old, r)
		}
	}
	return old, nil
}

func writeResults(path string, recs []record) error {
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// runAll runs every measurement (or those -only names), round by round:
// each round runs runckit and the floor back to back for every size,
// alternating which goes first.
func runAll(ctx context.Context, cfg config, env *env) (*results, error) {
	res := &results{}

	// Exec burst and lifecycle: cheap enough to interleave in every round.
	burstRK := make(map[int][]time.Duration)
	burstFL := make(map[int][]time.Duration)
	type lcKey struct {
		name     string
		n, width int
	}
	var lcKeys []lcKey
	if cfg.want("lifecycle-seq") {
		lcKeys = append(lcKeys, lcKey{"lifecycle-seq", cfg.lcSeq, 1})
	}
	if cfg.want("lifecycle-par") {
		lcKeys = append(lcKeys, lcKey{"lifecycle-par", cfg.lcPar, cfg.lcParWidth})
	}
	lcRK := make(map[lcKey][]time.Duration)
	lcFL := make(map[lcKey][]time.Duration)
	lcPhRK := make(map[lcKey][]phaseTimes)
	lcPhFL := make(map[lcKey][]phaseTimes)

	var burstC *runckit.Container
	if cfg.want("exec-burst") {
		var err error
		if burstC, err = env.newBurstContainer(ctx); err != nil {
			return res, err
		}
	}
	// Warm up (untimed): page cache, runc binary, first-use setup in both
	// paths, so that round 1 does not pay for whichever side runs first.
	log.Print("warm-up")
	if burstC != nil {
		if _, err := env.burstRunckit(ctx, burstC, -1, 2); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		if _, err := env.burstFloor(ctx, burstC, 2); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
	}
	if _, _, err := env.lifecycleRunckit(ctx, -1, 2, 1); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	if _, _, err := env.lifecycleFloor(ctx, -1, 2, 1); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	var latency []time.Duration
	var latBurst []time.Duration
	var scaleRK, scaleFL []time.Duration
	var scaleUse []usage

	for r := 0; r < cfg.rounds; r++ {
		rkFirst := r%2 == 0
		log.Printf("round %d/%d", r+1, cfg.rounds)
		for _, n := range cfg.burstNs {
			if burstC == nil {
				break
			}
			rk, fl, err := pair(rkFirst,
				func() (time.Duration, error) { return env.burstRunckit(ctx, burstC, r, n) },
				func() (time.Duration, error) { return env.burstFloor(ctx, burstC, n) })
			if err != nil {
				return res, fmt.Errorf("exec burst N=%d: %w", n, err)
			}
			burstRK[n] = append(burstRK[n], rk)
			burstFL[n] = append(burstFL[n], fl)
			log.Printf("  exec burst N=%-4d runckit %-10v floor %v", n, rk.Round(time.Microsecond), fl.Round(time.Microsecond))
		}
		for _, k := range lcKeys {
			var phRK, phFL phaseTimes
			var rk, fl time.Duration
			var err error
			if k.width == 1 {
				rk, fl, phRK, phFL, err = env.lifecycleSeq(ctx, r, k.n)
			} else {
				rk, fl, err = pair(rkFirst,
					func() (d time.Duration, err error) {
						d, phRK, err = env.lifecycleRunckit(ctx, r, k.n, k.width)
						return d, err
					},
					func() (d time.Duration, err error) {
						d, phFL, err = env.lifecycleFloor(ctx, r, k.n, k.width)
						return d, err
					})
			}
			if err != nil {
				return res, fmt.Errorf("lifecycle %d x%d: %w", k.n, k.width, err)
			}
			lcRK[k] = append(lcRK[k], rk)
			lcFL[k] = append(lcFL[k], fl)
			lcPhRK[k] = append(lcPhRK[k], phRK.perLifecycle(k.n))
			lcPhFL[k] = append(lcPhFL[k], phFL.perLifecycle(k.n))
			log.Printf("  lifecycle %d, %d at a time: runckit %-10v floor %v (%.3fx); runckit's own work %.2f ms per lifecycle",
				k.n, k.width, rk.Round(time.Millisecond), fl.Round(time.Millisecond), float64(rk)/float64(fl),
				phRK.perLifecycle(k.n).own())
		}
		if r >= cfg.heavyRounds {
			continue
		}
		if cfg.want("exit-latency") {
			lat, burst, err := env.exitLatency(ctx, r, cfg.latProcs, cfg.latConts, cfg.parallel)
			if err != nil {
				return res, fmt.Errorf("exit latency: %w", err)
			}
			latency = append(latency, lat...)
			latBurst = append(latBurst, burst)
			log.Printf("  exit latency, %d execs: p50 %v p99 %v max %v (burst %v)", cfg.latProcs,
				percentile(lat, 50), percentile(lat, 99), percentile(lat, 100), burst.Round(time.Millisecond))
		}
		if cfg.want("scale-create") {
			var use usage
			rk, fl, err := pair(rkFirst,
				func() (d time.Duration, err error) {
					d, use, err = env.scaleRunckit(ctx, r, cfg.scale, cfg.parallel)
					return d, err
				},
				func() (time.Duration, error) { return env.scaleFloor(ctx, r, cfg.scale, cfg.parallel) })
			if err != nil {
				return res, fmt.Errorf("scale %d: %w", cfg.scale, err)
			}
			scaleRK = append(scaleRK, rk)
			scaleFL = append(scaleFL, fl)
			scaleUse = append(scaleUse, use)
			log.Printf("  scale %d: create runckit %v floor %v (%.3fx); per container heap %.0f B, %.2f goroutines, %.2f fds",
				cfg.scale, rk.Round(time.Millisecond), fl.Round(time.Millisecond), float64(rk)/float64(fl), use.heap, use.goroutines, use.fds)
		}
	}
	if burstC != nil {
		if err := env.deleteBurstContainer(ctx, burstC); err != nil {
			return res, err
		}
	}

	for _, n := range cfg.burstNs {
		if burstC == nil {
			break
		}
		rk, fl := median(burstRK[n]), median(burstFL[n])
		res.burst = append(res.burst, burstPoint{n: n, runckit: rk, floor: fl})
		res.records = append(res.records, pairRecord("exec-burst", n, 0, cfg.rounds, rk, fl,
			"N concurrent execs of `true` in one container, wall time until all exited"))
	}
	for _, k := range lcKeys {
		note := "create+start+wait+delete of `true` containers in sequence"
		if k.width > 1 {
			note = fmt.Sprintf("create+start+wait+delete of `true` containers, %d at a time", k.width)
		}
		rec := pairRecord(k.name, k.n, k.width, cfg.rounds, median(lcRK[k]), median(lcFL[k]), note)
		rec.RunckitPhasesMs = medianPhases(lcPhRK[k]).ms(true)
		rec.FloorPhasesMs = medianPhases(lcPhFL[k]).ms(false)
		res.records = append(res.records, rec)
	}
	if len(latBurst) > 0 {
		res.records = append(res.records, record{
			Name:     "exit-latency",
			N:        cfg.latProcs,
			Rounds:   len(latBurst),
			RunckitS: median(latBurst).Seconds(),
			P50Ms:    ms(percentile(latency, 50)),
			P99Ms:    ms(percentile(latency, 99)),
			MaxMs:    ms(percentile(latency, 100)),
			Note: fmt.Sprintf("%d sleep execs over %d containers SIGKILLed in one burst; reap (ExitedAt) to sink call, all rounds pooled; runckit_s is kill-to-last-event",
				cfg.latProcs, cfg.latConts),
		})
	}
	if len(scaleRK) > 0 {
		use := medianUsage(scaleUse)
		rec := pairRecord("scale-create", cfg.scale, cfg.parallel, len(scaleRK), median(scaleRK), median(scaleFL),
			"create of M live containers; resources per idle running container (heap in use after GC, goroutines, open fds)")
		rec.HeapBytesPerContainer = use.heap
		rec.GoroutinesPerContainer = use.goroutines
		rec.FdsPerContainer = use.fds
		res.records = append(res.records, rec)
	}
	return res, nil
}

// pair runs the runckit and floor variants of one measurement back to back.
func pair(rkFirst bool, rk, fl func() (time.Duration, error)) (time.Duration, time.Duration, error) {
	var a, b time.Duration
	var err error
	if rkFirst {
		if a, err = rk(); err != nil {
			return 0, 0, fmt.Errorf("runckit: %w", err)
		}
		if b, err = fl(); err != nil {
			return 0, 0, fmt.Errorf("floor: %w", err)
		}
	} else {
		if b, err = fl(); err != nil {
			return 0, 0, fmt.Errorf("floor: %w", err)
		}
		if a, err = rk(); err != nil {
			return 0, 0, fmt.Errorf("runckit: %w", err)
		}
	}
	return a, b, nil
}

func pairRecord(name string, n, par, rounds int, rk, fl time.Duration, note string) record {
	r := record{Name: name, N: n, Parallel: par, Rounds: rounds, RunckitS: rk.Seconds(), FloorS: fl.Seconds(), Note: note}
	if fl > 0 {
		r.Ratio = float64(rk) / float64(fl)
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
