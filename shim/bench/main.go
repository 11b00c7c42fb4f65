// Command bench compares the runckit shim (io.containerd.runckit.v1) with
// containerd's stock runc shim (io.containerd.runc.v2), side by side in one
// run, through containerd's Go client against a containerd v2.4.2 that the
// bench starts for itself (root, state and sockets in a temp dir), and
// measures the raw runc floor (go-runc, no containerd, no shim) in the same
// rounds. Rounds are interleaved (the side that goes first rotates) and
// reported as medians.
//
//	go run ./bench                    # full run: 5 rounds, writes bench/results.json
//	go run ./bench -quick             # a smoke run of every measurement, seconds; asserts nothing about speed
//	go run ./bench -only exec-burst   # one measurement (repeatable: exec-burst, lifecycle-seq, lifecycle-par, rss)
//
// It needs root, runc, /bin/busybox (static), containerd v2.4.2 and the stock
// shim (default /root/go/bin), and the Go toolchain to build the runckit shim.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"
)

const (
	namespace   = "shimbench"
	stockRT     = "io.containerd.runc.v2"
	runckitRT   = "io.containerd.runckit.v1"
	stockShim   = "containerd-shim-runc-v2"
	ctrdVersion = "v2.4.2"
	runckitShim = "containerd-shim-runckit-v1"
	imageRef    = "docker.io/library/shimbench-busybox:latest"
)

var measurements = []string{"exec-burst", "lifecycle-seq", "lifecycle-par", "rss"}

type onlyFlag []string

func (o *onlyFlag) String() string { return strings.Join(*o, ",") }
func (o *onlyFlag) Set(v string) error {
	if !slices.Contains(measurements, v) {
		return fmt.Errorf("unknown measurement %q (have %s)", v, strings.Join(measurements, ", "))
	}
	*o = append(*o, v)
	return nil
}

type config struct {
	quick      bool
	rounds     int
	out        string
	only       onlyFlag
	containerd string
	runc       string
	busybox    string
	shimBin    string
	static     bool

	burstNs    []int
	lcSeq      int
	lcPar      int
	lcParWidth int
	rssN       int
}

func (c *config) runs(name string) bool { return len(c.only) == 0 || slices.Contains(c.only, name) }

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	var cfg config
	flag.BoolVar(&cfg.quick, "quick", false, "small sizes and 1 round: a smoke run of seconds that asserts nothing about speed")
	flag.DurationVar(&rssSettle, "rss-settle", 0, "how long the rss measurement's containers run before their shims' memory is read (default 31s, past pkg/shim's first return of freed memory at 30s; 3s with -quick)")
	flag.IntVar(&cfg.rounds, "rounds", 0, "rounds of each measurement (default 5, 1 with -quick)")
	flag.StringVar(&cfg.out, "out", "bench/results.json", "where to write the JSON results (with -quick: a file in $TMPDIR unless given)")
	flag.Var(&cfg.only, "only", "run only this measurement (repeatable): "+strings.Join(measurements, ", "))
	flag.StringVar(&cfg.containerd, "containerd", "/root/go/bin/containerd", "containerd v2.4.2 binary; the stock shim is looked up next to it and on PATH")
	flag.StringVar(&cfg.runc, "runc", "", "runc binary for the floor (default: runc on PATH, which both shims use too)")
	flag.StringVar(&cfg.busybox, "busybox", "/bin/busybox", "static busybox the image and the floor's rootfs are built from")
	flag.BoolVar(&cfg.static, "static", true, "build both shims as containerd's Makefile builds its shims (CGO_ENABLED=0, a static binary): the runckit shim from this module, the stock shim from the module cache (go install ...@"+ctrdVersion+", offline once containerd was installed); false: the runckit shim with the toolchain's defaults and the stock shim found next to containerd")
	flag.StringVar(&cfg.shimBin, "shim-bin", "", "use this "+runckitShim+" binary instead of building one from this module (e.g. a build with profiling)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		if !set["out"] {
			cfg.out = filepath.Join(os.TempDir(), "runckit-shim-bench-quick.json")
		}
		cfg.burstNs = []int{5, 10}
		cfg.lcSeq, cfg.lcPar, cfg.lcParWidth, cfg.rssN = 3, 6, 2, 3
		if rssSettle == 0 {
			rssSettle = 3 * time.Second
		}
		if cfg.rounds == 0 {
			cfg.rounds = 1
		}
	} else {
		cfg.burstNs = []int{50, 200}
		cfg.lcSeq, cfg.lcPar, cfg.lcParWidth, cfg.rssN = 50, 200, 8, 20
		if rssSettle == 0 {
			rssSettle = 31 * time.Second
		}
		if cfg.rounds == 0 {
			cfg.rounds = 5
		}
	}
	if cfg.rounds < 1 {
		log.Fatal("-rounds must be at least 1")
	}
	os.Exit(run(cfg))
}

// side is one of the three ways the bench runs containers.
type side interface {
	burst(ctx context.Context, round, n int) (time.Duration, error)
	lifecycle(ctx context.Context, round, n, width int) (time.Duration, error)
}

type named struct {
	name string
	s    side
}

func run(cfg config) (code int) {
	if os.Geteuid() != 0 {
		log.Print("needs root")
		return 1
	}
	// The floor waits for its containers' inits with wait4: they are
	// re-parented to the bench when `runc create` exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Printf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
		return 1
	}
	timeout := 60 * time.Minute
	if cfg.quick {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = namespaces.WithNamespace(ctx, namespace)

	runcPath := cfg.runc
	if runcPath == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			log.Print(err)
			return 1
		}
		runcPath = p
	}

	// Short path: the shims' socket paths must fit in sun_path.
	dir, err := os.MkdirTemp("", "shb-")
	if err != nil {
		log.Print(err)
		return 1
	}
	var cleanups []func() error
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			if err := cleanups[i](); err != nil {
				log.Print(err)
				code = 1
			}
		}
		if err := unmountUnder(dir); err != nil {
			log.Print(err)
			code = 1
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Print(err)
			code = 1
		}
	}()

	binDir := filepath.Join(dir, "bin")
	if cfg.shimBin == "" {
		log.Printf("building %s", runckitShim)
		if err := buildShim(ctx, binDir, cfg.static); err != nil {
			log.Print(err)
			return 1
		}
	} else if err := copyFile(cfg.shimBin, filepath.Join(binDir, runckitShim)); err != nil {
		log.Print(err)
		return 1
	}
	if cfg.static {
		log.Printf("building %s %s static", stockShim, ctrdVersion)
		if err := buildStockShim(ctx, binDir); err != nil {
			log.Print(err)
			return 1
		}
	}

	floor, err := newFloor(ctx, filepath.Join(dir, "floor"), runcPath, cfg.busybox)
	if err != nil {
		log.Print(err)
		return 1
	}
	cleanups = append(cleanups, func() error { return floor.close(context.WithoutCancel(ctx)) })
	reapCtx, stopReap := context.WithCancel(context.Background())
	var reapWG sync.WaitGroup
	reapWG.Add(1)
	go func() { defer reapWG.Done(); reapShims(reapCtx, floor) }()
	cleanups = append(cleanups, func() error {
		stopReap()
		reapWG.Wait()
		for _, pid := range zombieChildren() {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
		return nil
	})

	log.Printf("starting containerd (%s) in %s", cfg.containerd, dir)
	d, err := startDaemon(ctx, cfg.containerd, dir, binDir)
	if err != nil {
		log.Print(err)
		return 1
	}
	cleanups = append(cleanups, func() error {
		cctx := context.WithoutCancel(ctx)
		err := cleanNamespace(cctx, d)
		d.stop()
		// Shims that outlived containerd (none should) serve nobody now.
		for _, bin := range []string{stockShim, runckitShim} {
			for _, pid := range shimPids(d.address, bin) {
				err = errors.Join(err, fmt.Errorf("%s (pid %d) outlived containerd; killed", bin, pid))
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		return err
	})
	img, err := d.importImage(ctx, cfg.busybox, imageRef)
	if err != nil {
		log.Print(err)
		return 1
	}
	runcRoot := filepath.Join(dir, "runc")
	stock := &shimSide{name: "stock", runtime: stockRT, client: d.client, image: img, opts: &options.Options{Root: runcRoot}}
	rk := &shimSide{name: "runckit", runtime: runckitRT, client: d.client, image: img, opts: &options.Options{Root: runcRoot}}

	res, err := measure(ctx, cfg, d, stock, rk, floor)
	printTable(os.Stdout, res)
	if res != nil && len(res.Records) > 0 {
		if werr := writeJSON(cfg.out, res); werr != nil {
			log.Print(werr)
			code = 1
		} else {
			fmt.Printf("results: %s\n", cfg.out)
		}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			log.Print("interrupted")
		}
		log.Print(err)
		// The temp dir goes; keep containerd's log for the diagnosis.
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("shim-bench-containerd-%d.log", os.Getpid()))
		if cerr := copyFile(filepath.Join(dir, "containerd.log"), keep); cerr == nil {
			log.Printf("containerd's log: %s", keep)
		}
		return 1
	}
	return code
}

// buildShim builds the runckit shim from this module into binDir; static
// as containerd builds its own shims.
func buildShim(ctx context.Context, binDir string, static bool) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	modDir, err := shimModuleDir()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, runckitShim), "./cmd/"+runckitShim)
	cmd.Dir = modDir
	cmd.Env = buildEnv(static)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s in %s: %w", runckitShim, modDir, err)
	}
	return nil
}

// buildStockShim installs containerd's runc shim at ctrdVersion into
// binDir, built as containerd's Makefile builds it (CGO_ENABLED=0), so the
// two shims differ in their code alone. binDir is first on containerd's
// PATH.
func buildStockShim(ctx context.Context, binDir string) error {
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/containerd/containerd/v2/cmd/"+stockShim+"@"+ctrdVersion)
	cmd.Dir = os.TempDir() // outside any module: the version is the one asked for
	cmd.Env = append(buildEnv(true), "GOBIN="+binDir, "GOFLAGS=-tags=no_btrfs")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go install %s@%s: %w (run with -static=false to use the one next to containerd)", stockShim, ctrdVersion, err)
	}
	return nil
}

// buildEnv is the environment of a shim build: CGO_ENABLED=0 when static,
// as containerd's SHIM_CGO_ENABLED.
func buildEnv(static bool) []string {
	env := os.Environ()
	if static {
		env = append(env, "CGO_ENABLED=0")
	}
	return env
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// shimModuleDir finds the shim module: the current directory or a parent
// whose go.mod is github.com/runckit/runckit/shim, or shim/ below one.
func shimModuleDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		for _, cand := range []string{d, filepath.Join(d, "shim")} {
			data, err := os.ReadFile(filepath.Join(cand, "go.mod"))
			if err == nil && strings.Contains(string(data), "module github.com/runckit/runckit/shim\n") {
				return cand, nil
			}
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("the shim module (github.com/runckit/runckit/shim) is not at or above %s", wd)
		}
	}
}

// cleanNamespace kills and deletes every task and container left in the
// bench's namespace and removes the image.
func cleanNamespace(ctx context.Context, d *daemon) error {
	cs, err := d.client.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	if len(cs) > 0 {
		log.Printf("cleaning up %d containers", len(cs))
	}
	for _, c := range cs {
		t, terr := c.Task(ctx, nil)
		if terr != nil {
			t = nil
		}
		if err := killDelete(ctx, c, t); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.client.ImageService().Delete(ctx, imageRef); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmountUnder lazily unmounts whatever is still mounted below dir (only
// after an error: containerd unmounts its snapshots itself).
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	slices.Sort(mps)
	var errs []error
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mps[i], err))
		}
	}
	if len(mps) > 0 {
		log.Printf("unmounted %d mounts left under %s", len(mps), dir)
	}
	return errors.Join(errs...)
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func goVersion() string { return runtime.Version() }
