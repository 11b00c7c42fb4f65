package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// events turns (action, test, output) triples into test2json lines.
func events(t *testing.T, evs ...[3]string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range evs {
		j, err := json.Marshal(event{Action: e[0], Test: e[1], Output: e[2]})
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// TestTallyCountsTopLevelAndHangs: subtests are not counted, a test that
// started and never got a verdict is a hung failure, a test paused for a
// parallel slot when the binary died is forgotten (the next round runs it),
// and a verdict line without its event (binary died right after) counts.
func TestTallyCountsTopLevelAndHangs(t *testing.T) {
	tl := newTally()
	tl.round = 1
	var finished []string
	in := events(t,
		[3]string{"run", "TestA", ""}, [3]string{"run", "TestA/sub", ""},
		[3]string{"pass", "TestA/sub", ""}, [3]string{"pass", "TestA", ""},
		[3]string{"run", "TestB", ""},
		[3]string{"output", "TestB", "    b_test.go:10: waiting for the shim\n"},
		[3]string{"output", "TestB", "    b_test.go:12: \n        \tError:      \tNot equal\n"},
		[3]string{"fail", "TestB", ""},
		[3]string{"run", "TestC", ""}, [3]string{"output", "TestC", "    c_test.go:3: no criu\n"}, [3]string{"skip", "TestC", ""},
		[3]string{"run", "TestP", ""}, [3]string{"pause", "TestP", ""},
		[3]string{"run", "TestV", ""}, [3]string{"output", "TestV", "--- PASS: TestV (1.50s)\n"},
		[3]string{"run", "TestH", ""}, [3]string{"output", "TestH", "    h_test.go:7: exec 3 of 100\n"},
	)
	if err := tl.readEvents(strings.NewReader(in), func(r *testRecord) { finished = append(finished, r.Name+"="+r.Result) }); err != nil {
		t.Fatal(err)
	}
	tl.endRound()
	if got, want := strings.Join(finished, " "), "TestA=PASS TestB=FAIL TestC=SKIP TestV=PASS"; got != want {
		t.Errorf("finished callbacks %q, want %q", got, want)
	}
	c := tl.counts()
	if c != (counts{pass: 2, fail: 2, skip: 1, hung: 1}) {
		t.Errorf("counts %+v, want pass=2 fail=2 (one hung) skip=1", c)
	}
	if _, ok := tl.tests["TestP"]; ok {
		t.Error("TestP never ran (paused for a parallel slot) but is still recorded")
	}
	if n := tl.tests["TestB"].note(); n != "b_test.go:12: Not equal" {
		t.Errorf("TestB note %q", n)
	}
	if n := tl.tests["TestC"].note(); n != "c_test.go:3: no criu" {
		t.Errorf("TestC note %q", n)
	}
	if n := tl.tests["TestH"].note(); !strings.HasPrefix(n, "no verdict") || !strings.Contains(n, "exec 3 of 100") {
		t.Errorf("TestH note %q", n)
	}
	tsv := filepath.Join(t.TempDir(), "r.tsv")
	if err := tl.writeTSV(tsv); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(tsv)
	if !strings.Contains(string(b), "TestA/sub\tPASS\t0.00\tsub\t1\t\n") || !strings.Contains(string(b), "TestH\tHUNG\t") {
		t.Errorf("TSV:\n%s", b)
	}
}

// TestVerdictAgainstExpectations: unlisted failures, hangs and skips are
// unexpected; listed ones are not; a listed test that passed is stale.
func TestVerdictAgainstExpectations(t *testing.T) {
	f := filepath.Join(t.TempDir(), "expect.txt")
	if err := os.WriteFile(f, []byte("# comment\nTestCheckpoint* no criu here\n\nTestKnown  tracked in issue 9\nTestFixed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	exp, err := readExpectations([]string{f})
	if err != nil {
		t.Fatal(err)
	}
	recs := []*testRecord{
		{Name: "TestCheckpointA", Result: Skip}, {Name: "TestCheckpointB", Result: Skip},
		{Name: "TestKnown", Result: Fail}, {Name: "TestFixed", Result: Pass},
		{Name: "TestNew", Result: Fail}, {Name: "TestStuck", Result: Hung}, {Name: "TestOdd", Result: Skip},
		{Name: "TestFine", Result: Pass},
	}
	unexpected, stale := verdict(recs, exp)
	if got := strings.Join(unexpected, ","); got != "TestNew (FAIL),TestOdd (SKIP),TestStuck (HUNG)" {
		t.Errorf("unexpected = %q", got)
	}
	if len(stale) != 1 || !strings.HasPrefix(stale[0], "TestFixed (") {
		t.Errorf("stale = %q", stale)
	}
	if exp[1].why != "tracked in issue 9" {
		t.Errorf("reason %q", exp[1].why)
	}
	if _, err := readExpectations([]string{filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("a missing EXPECT_FILE was accepted")
	}
}

func TestShimNames(t *testing.T) {
	if n, _ := shimName("io.containerd.runckit.v1"); n != "containerd-shim-runckit-v1" {
		t.Errorf("shimName = %q", n)
	}
	if r, _ := runtimeOf("/x/containerd-shim-runc-v2"); r != "io.containerd.runc.v2" {
		t.Errorf("runtimeOf = %q", r)
	}
	if _, err := runtimeOf("/x/myshim"); err == nil {
		t.Error("runtimeOf accepted a name containerd can not map")
	}
}

func TestHostsEditRestores(t *testing.T) {
	f := filepath.Join(t.TempDir(), "hosts")
	orig := "127.0.0.1 localhost\n10.0.0.1 stale " + hostsMark + "\n"
	if err := os.WriteFile(f, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := pointAtLoopback(f, []string{"ghcr.io", "registry.k8s.io"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f)
	if strings.Contains(string(b), "stale") || !strings.Contains(string(b), "127.0.0.1 ghcr.io "+hostsMark) {
		t.Errorf("during the run:\n%s", b)
	}
	e.restore()
	b, _ = os.ReadFile(f)
	if string(b) != "127.0.0.1 localhost\n" {
		t.Errorf("after restore: %q", b)
	}
}
