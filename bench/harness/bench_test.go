package harness

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/runckit/runckit/image"
	"github.com/runckit/runckit/runckittest"
)

var (
	rounds    = flag.Int("rounds", 20, "rounds; every round runs each measurement once")
	parallel  = flag.Int("par", 8, "tests at once in the parallel rows")
	outPath   = flag.String("out", "results.json", "where the results go")
	onlyFloor = flag.Bool("floor-only", false, "only the cached start against the runc floor: no daemon needed")
)

// pollInterval is both tools' port poll: testcontainers' default is 100ms,
// runckittest's ForPort 20ms; the same for both keeps the poll out of the
// comparison.
const pollInterval = 20 * time.Millisecond

// TestMain lets -par tests run at once: go test's own -parallel defaults
// to GOMAXPROCS, which would cap the parallel rows at the core count.
func TestMain(m *testing.M) {
	flag.Parse()
	if p := flag.Lookup("test.parallel"); p != nil && p.Value.String() != "" {
		if n, err := strconv.Atoi(p.Value.String()); err == nil && n < *parallel {
			p.Value.Set(strconv.Itoa(*parallel))
		}
	}
	os.Exit(m.Run())
}

// bench is what every run of the scenario shares.
type bench struct {
	store     *image.Store
	layoutDir string
	floorRoot string // runc --root of the floor's containers
	floorImg  *image.Image

	record  bool // off in the warm-up
	mu      sync.Mutex
	samples map[string][]time.Duration
}

func (b *bench) add(key string, d time.Duration) {
	b.mu.Lock()
	b.samples[key] = append(b.samples[key], d)
	b.mu.Unlock()
}

// TestHarnessBench runs the scenario with runckittest and testcontainers-go,
// -rounds times, sequentially and -par at once, rounds interleaved and
// the order alternated; then the raw runc create+start floor against
// runckittest's start of a cached image. Results go to -out.
func TestHarnessBench(t *testing.T) {
	if os.Getenv("DOCKER_HOST") == "" && !*onlyFloor {
		t.Skip("needs a docker daemon in DOCKER_HOST (and root, runc, busybox-static): run ./run.sh")
	}
	if err := runckittest.Check(); err != nil {
		t.Skipf("real containers can not run here: %v", err)
	}
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true") // Ryuk's image can not be pulled offline
	ctx := context.Background()
	work := t.TempDir()

	img, err := WebImage(runckittest.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	tarPath, layoutDir, err := WriteImage(work, img)
	if err != nil {
		t.Fatal(err)
	}
	store, err := image.Open(filepath.Join(work, "store"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	firstImg, err := store.FromLayout(ctx, layoutDir, Tag)
	if err != nil {
		t.Fatal(err)
	}
	coldUnpack := time.Since(t0)

	var dockerVersion, dockerAPI string
	var dockerLoad time.Duration
	if !*onlyFloor {
		provider, err := testcontainers.NewDockerProvider()
		if err != nil {
			t.Fatal(err)
		}
		defer provider.Close()
		info, err := provider.Client().ServerVersion(ctx, struct{}{})
		if err != nil {
			t.Fatal(err)
		}
		dockerVersion, dockerAPI = info.Version, info.APIVersion
		t.Logf("docker %s, API %s", info.Version, info.APIVersion)
		f, err := os.Open(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		t0 = time.Now()
		res, err := provider.Client().ImageLoad(ctx, f)
		if err == nil {
			_, err = io.Copy(io.Discard, res)
			res.Close()
		}
		f.Close()
		if err != nil {
			t.Fatalf("docker load: %v", err)
		}
		dockerLoad = time.Since(t0)
	}

	floorRoot, err := os.MkdirTemp("/run", "runckit-harness-floor-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(floorRoot)
	b := &bench{store: store, layoutDir: layoutDir, floorRoot: floorRoot, floorImg: firstImg,
		samples: map[string][]time.Duration{}}

	// An untimed warm-up of each, so that no first-run cost (docker's
	// first container, page cache) lands in round 1.
	b.record = false
	t.Run("warmup", func(t *testing.T) {
		if !*onlyFloor {
			b.runckittest(t, "warm")
			b.testcontainers(t, "warm")
		}
		b.floor(t)
		b.cachedStart(t)
	})
	b.record = true

	var loads []string
	loads = append(loads, loadavg())
	for r := 0; r < *rounds; r++ {
		kinds := []string{"rk", "tc"}
		if r%2 == 1 {
			kinds = []string{"tc", "rk"}
		}
		if *onlyFloor {
			kinds = nil
		}
		for _, k := range kinds {
			t.Run(fmt.Sprintf("r%d/%s/seq", r, k), func(t *testing.T) { b.one(t, k, "seq") })
		}
		for _, k := range kinds {
			t.Run(fmt.Sprintf("r%d/%s/par", r, k), func(t *testing.T) {
				t0 := time.Now()
				t.Run("group", func(t *testing.T) {
					for i := 0; i < *parallel; i++ {
						t.Run(fmt.Sprint(i), func(t *testing.T) {
							t.Parallel()
							b.one(t, k, "par")
						})
					}
				})
				b.add(k+"/par/batch", time.Since(t0))
			})
		}
		if r%2 == 0 {
			t.Run(fmt.Sprintf("r%d/floor", r), b.floor)
			t.Run(fmt.Sprintf("r%d/cached", r), b.cachedStart)
		} else {
			t.Run(fmt.Sprintf("r%d/cached", r), b.cachedStart)
			t.Run(fmt.Sprintf("r%d/floor", r), b.floor)
		}
		loads = append(loads, loadavg())
	}
	if t.Failed() {
		return
	}
	b.report(t, coldUnpack, dockerLoad, loads, dockerVersion, dockerAPI)
}

// one runs the scenario once as test t, with runckittest (k "rk") or
// testcontainers-go ("tc"), recording time to ready and the test's wall
// time, its cleanup included.
func (b *bench) one(t *testing.T, k, mode string) {
	t0 := time.Now()
	// Registered first, so it runs last: after the container's removal.
	t.Cleanup(func() {
		if b.record && !t.Failed() {
			b.add(k+"/"+mode+"/wall", time.Since(t0))
		}
	})
	var ready time.Duration
	if k == "rk" {
		ready = b.runckittest(t, mode)
	} else {
		ready = b.testcontainers(t, mode)
	}
	if b.record {
		b.add(k+"/"+mode+"/ready", ready)
	}
}

// runckittest is the scenario as a runckittest user writes it: the image
// from the OCI layout (unpacked in the store already, as after the first
// test of a run), Start waiting for the port, a GET through the
// container's own loopback; t.Cleanup removes it.
func (b *bench) runckittest(t *testing.T, _ string) time.Duration {
	t0 := time.Now()
	img, err := b.store.FromLayout(context.Background(), b.layoutDir, Tag)
	if err != nil {
		t.Fatal(err)
	}
	c := img.Start(t, runckittest.Options{
		Wait: []runckittest.Strategy{runckittest.ForPort(Port).WithTimeout(time.Minute)},
	})
	ready := time.Since(t0)
	get(t, c.HTTPClient(), fmt.Sprintf("http://localhost:%d/index.html", Port))
	return ready
}

// testcontainers is the scenario as a testcontainers-go user writes it:
// the image loaded in the daemon, the port exposed and mapped, waited for
// with ForListeningPort (its default checks: the mapped port from the host
// and the port inside), a GET through the mapped port; CleanupContainer
// terminates it with a stop timeout of 0, as runckittest kills at once.
func (b *bench) testcontainers(t *testing.T, _ string) time.Duration {
	ctx := context.Background()
	t0 := time.Now()
	port := fmt.Sprintf("%d/tcp", Port)
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        Tag,
			ExposedPorts: []string{port},
			WaitingFor:   wait.ForListeningPort(port).WithPollInterval(pollInterval).WithStartupTimeout(time.Minute),
		},
		Started: true,
	})
	testcontainers.CleanupContainer(t, c, testcontainers.StopTimeout(0))
	if err != nil {
		t.Fatal(err)
	}
	ready := time.Since(t0)
	ep, err := c.PortEndpoint(ctx, port, "http")
	if err != nil {
		t.Fatal(err)
	}
	get(t, &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}, ep+"/index.html")
	return ready
}

func get(t *testing.T, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(body) != Body {
		t.Fatalf("GET %s: %d %q %v, want 200 %q", url, resp.StatusCode, body, err, Body)
	}
}

// cachedStart is runckittest's second start of a cached image: the image
// looked up in the store (already unpacked) and Start with no wait, until
// runc start has returned. The removal is not timed.
func (b *bench) cachedStart(t *testing.T) {
	t0 := time.Now()
	img, err := b.store.FromLayout(context.Background(), b.layoutDir, Tag)
	if err != nil {
		t.Fatal(err)
	}
	img.Start(t, runckittest.Options{})
	if b.record {
		b.add("cached-start", time.Since(t0))
	}
}

// floor is the raw runc create+start of the same image: a bundle whose
// config.json is the image's spec with the unpacked root (read-only, as
// runc needs no writable layer for httpd), `runc create` with stdio on
// /dev/null and `runc start`. Writing the bundle and the removal are not
// timed.
func (b *bench) floor(t *testing.T) {
	spec, err := b.floorImg.Spec()
	if err != nil {
		t.Fatal(err)
	}
	spec.Root.Path, spec.Root.Readonly = b.floorImg.Rootfs, true
	bundle := t.TempDir()
	if err := runckittest.WriteBundle(bundle, spec); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("harness-floor-%d", time.Now().UnixNano())
	// runc create hands its stdio to the container's init, so stdio is
	// /dev/null (a pipe would stay open as long as httpd runs); runc's
	// errors go to its log.
	logPath := filepath.Join(bundle, "runc.log")
	runc := func(args ...string) error {
		cmd := exec.Command(runckittest.Runtime(), append([]string{"--root", b.floorRoot, "--log", logPath}, args...)...)
		if err := cmd.Run(); err != nil {
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		runc("delete", "--force", id)
	})
	t0 := time.Now()
	if err := runc("create", "--bundle", bundle, "--pid-file", filepath.Join(bundle, "pid"), id); err != nil {
		t.Fatal(err)
	}
	if err := runc("start", id); err != nil {
		t.Fatal(err)
	}
	if b.record {
		b.add("floor", time.Since(t0))
	}
}

// loadavg is /proc/loadavg's first three fields.
func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Row is one line of the results: a measurement's median for runckittest
// and for the other side (testcontainers-go, or the runc floor).
type Row struct {
	Name       string  `json:"name"`
	Samples    int     `json:"samples"`
	Runckit    float64 `json:"runckittest_s"`
	Other      float64 `json:"other_s"`
	OtherName  string  `json:"other"`
	Ratio      float64 `json:"ratio"`
	RatioMeans string  `json:"ratio_means"`
}

// Results is what -out holds.
type Results struct {
	Date                 string   `json:"date"`
	Rounds               int      `json:"rounds"`
	Parallel             int      `json:"parallel"`
	Testcontainers       string   `json:"testcontainers_go"`
	Docker               string   `json:"docker"`
	DockerAPI            string   `json:"docker_api"`
	Runc                 string   `json:"runc"`
	PollInterval         string   `json:"port_poll_interval"`
	ColdUnpackS          float64  `json:"runckittest_first_load_s"`
	DockerLoadS          float64  `json:"docker_load_s"`
	LoadAverage          []string `json:"load_average_per_round"`
	Rows                 []Row    `json:"rows"`
	CachedStartOverFloor float64  `json:"cached_start_over_floor"`
}

func (b *bench) report(t *testing.T, coldUnpack, dockerLoad time.Duration, loads []string, dockerVersion, api string) {
	res := Results{
		Date: time.Now().UTC().Format(time.RFC3339), Rounds: *rounds, Parallel: *parallel,
		Testcontainers: depVersion("github.com/testcontainers/testcontainers-go"),
		Docker:         dockerVersion, DockerAPI: api, Runc: runcVersion(),
		PollInterval: pollInterval.String(),
		ColdUnpackS:  coldUnpack.Seconds(), DockerLoadS: dockerLoad.Seconds(), LoadAverage: loads,
	}
	vs := func(name, rk, other, otherName, means string) {
		r, o := median(b.samples[rk]), median(b.samples[other])
		res.Rows = append(res.Rows, Row{Name: name, Samples: len(b.samples[rk]), Runckit: r.Seconds(),
			Other: o.Seconds(), OtherName: otherName, Ratio: o.Seconds() / r.Seconds(), RatioMeans: means})
	}
	const faster = "other / runckittest: how many times faster runckittest is"
	if !*onlyFloor {
		vs("time to ready, sequential", "rk/seq/ready", "tc/seq/ready", "testcontainers-go", faster)
		vs("per-test wall, sequential", "rk/seq/wall", "tc/seq/wall", "testcontainers-go", faster)
		vs(fmt.Sprintf("time to ready, %d in parallel", *parallel), "rk/par/ready", "tc/par/ready", "testcontainers-go", faster)
		vs(fmt.Sprintf("per-test wall, %d in parallel", *parallel), "rk/par/wall", "tc/par/wall", "testcontainers-go", faster)
		vs(fmt.Sprintf("batch of %d in parallel, wall", *parallel), "rk/par/batch", "tc/par/batch", "testcontainers-go", faster)
	}
	r, f := median(b.samples["cached-start"]), median(b.samples["floor"])
	res.Rows = append(res.Rows, Row{Name: "start of a cached image (no wait)", Samples: len(b.samples["cached-start"]),
		Runckit: r.Seconds(), Other: f.Seconds(), OtherName: "raw runc create+start",
		Ratio: r.Seconds() / f.Seconds(), RatioMeans: "runckittest / floor: target at most 1.2"})
	res.CachedStartOverFloor = r.Seconds() / f.Seconds()

	fmt.Printf("\n%-36s %8s %14s %14s %8s\n", "measurement (medians)", "samples", "runckittest", "other", "ratio")
	for _, row := range res.Rows {
		fmt.Printf("%-36s %8d %13.1fms %13.1fms %7.2fx  (%s)\n", row.Name, row.Samples, row.Runckit*1000, row.Other*1000, row.Ratio, row.OtherName)
	}
	fmt.Printf("first load of the image (unpack) %.1fms, docker load %.1fms; load average %s .. %s\n",
		coldUnpack.Seconds()*1000, dockerLoad.Seconds()*1000, loads[0], loads[len(loads)-1])
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(*outPath, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// depVersion is the version of module path that go.mod requires: a test
// binary's build info lists no dependencies.
func depVersion(path string) string {
	data, _ := os.ReadFile("go.mod")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == path {
			return f[1]
		}
	}
	return "?"
}

func runcVersion() string {
	out, _ := exec.Command(runckittest.Runtime(), "--version").Output()
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}
