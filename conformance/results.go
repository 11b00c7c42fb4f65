package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Result of one test. Hung means it started and never reported: the
// binary was stopped by the stall watchdog, its timeout or a panic.
const (
	Pass = "PASS"
	Fail = "FAIL"
	Skip = "SKIP"
	Hung = "HUNG"
)

// testRecord is what the runner knows about one test or subtest.
type testRecord struct {
	Name    string
	Result  string
	Seconds float64
	Round   int
	running bool
	lines   []string
}

// event is one line of `go tool test2json` output.
type event struct {
	Action  string
	Test    string
	Output  string
	Elapsed float64
}

// tally collects the test2json events of every round.
type tally struct {
	tests map[string]*testRecord
	order []string
	round int
	// tail is the last package-level output, shown when no test ran.
	tail []string
}

func newTally() *tally { return &tally{tests: map[string]*testRecord{}} }

var verdictLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)

// add takes one event. It reports the record when a top-level test has
// just finished.
func (t *tally) add(e event) *testRecord {
	if e.Test == "" {
		if e.Action == "output" {
			t.tail = append(t.tail, e.Output)
			if len(t.tail) > 60 {
				t.tail = t.tail[len(t.tail)-60:]
			}
		}
		return nil
	}
	r := t.tests[e.Test]
	if r == nil || (r.Round != t.round && e.Action == "run") {
		if r == nil {
			t.order = append(t.order, e.Test)
		}
		r = &testRecord{Name: e.Test, Result: Hung, Round: t.round}
		t.tests[e.Test] = r
	}
	finished := false
	switch e.Action {
	case "run", "cont":
		r.running = true
	case "pause":
		r.running = false
	case "output":
		// test2json reports a verdict only once it sees the next framing
		// line; when the binary dies right after "--- PASS", the verdict
		// line is all there is.
		if m := verdictLine.FindStringSubmatch(e.Output); m != nil && m[2] == e.Test && r.Result == Hung {
			r.Result = m[1]
			r.Seconds, _ = strconv.ParseFloat(m[3], 64)
			finished = true
		}
		if len(r.lines) < 3000 {
			r.lines = append(r.lines, strings.Split(strings.TrimRight(e.Output, "\n"), "\n")...)
		}
	case "pass", "fail", "skip":
		finished = r.Result == Hung
		r.Result = strings.ToUpper(e.Action)
		if e.Elapsed > 0 {
			r.Seconds = e.Elapsed
		}
		r.running = false
	}
	if finished && !strings.Contains(e.Test, "/") {
		return r
	}
	return nil
}

// endRound forgets tests of this round that were only waiting for a
// parallel slot when the binary stopped: they never ran, the next round
// runs them.
func (t *tally) endRound() {
	kept := t.order[:0]
	for _, n := range t.order {
		r := t.tests[n]
		top := topOf(n)
		if r.Result == Hung && r.Round == t.round && !r.running && !strings.Contains(n, "/") {
			delete(t.tests, n)
			continue
		}
		if _, ok := t.tests[top]; !ok {
			delete(t.tests, n)
			continue
		}
		kept = append(kept, n)
	}
	t.order = kept
}

func topOf(name string) string {
	if i := strings.Index(name, "/"); i >= 0 {
		return name[:i]
	}
	return name
}

// readEvents feeds test2json output into t, calling done for each
// finished top-level test.
func (t *tally) readEvents(r io.Reader, done func(*testRecord)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if rec := t.add(e); rec != nil && done != nil {
			done(rec)
		}
	}
	return sc.Err()
}

// topLevel returns the top-level records in the order they first ran.
func (t *tally) topLevel() []*testRecord {
	var out []*testRecord
	for _, n := range t.order {
		if !strings.Contains(n, "/") {
			out = append(out, t.tests[n])
		}
	}
	return out
}

var (
	// A t.Log/t.Error line of the tests: "    file_test.go:123: message".
	testLogLine = regexp.MustCompile(`^\s+\S+\.go:\d+: `)
	// containerd's own log lines, which the suite copies into test output.
	daemonLine = regexp.MustCompile(`level=(trace|debug|info|warning)|log_hook\.go:`)
)

// note is the line that best says why a test failed or skipped: a panic,
// else the first failure message (testify's "Error:" text joined to its
// location), else the test's last log line (t.Skip and t.Fatal end a
// test, so their message comes last).
func (r *testRecord) note() string {
	if r.Result == Pass {
		return ""
	}
	var last, assertion string
	for i, l := range r.lines {
		s := strings.TrimSpace(l)
		if strings.HasPrefix(s, "panic:") {
			assertion = s
			break
		}
		if !testLogLine.MatchString(l) || daemonLine.MatchString(l) {
			continue
		}
		last = s
		if assertion != "" || r.Result == Skip {
			continue
		}
		for j := i + 1; j < len(r.lines) && j < i+8 && !testLogLine.MatchString(r.lines[j]); j++ {
			if m := strings.TrimSpace(r.lines[j]); strings.HasPrefix(m, "Error:") {
				assertion = s + " " + strings.TrimSpace(strings.TrimPrefix(m, "Error:"))
				break
			}
		}
	}
	n := last
	if assertion != "" {
		n = assertion
	}
	if r.Result == Hung {
		n = "no verdict: still running when the test binary was stopped" + map[bool]string{true: "; last: " + n}[n != ""]
	}
	n = strings.Join(strings.Fields(n), " ")
	if len(n) > 300 {
		n = n[:300] + "..."
	}
	return n
}

// writeTSV writes one row per test and subtest.
func (t *tally) writeTSV(file string) error {
	var b strings.Builder
	b.WriteString("test\tresult\tseconds\tlevel\tround\tnote\n")
	for _, n := range t.order {
		r := t.tests[n]
		level := "top"
		if strings.Contains(n, "/") {
			level = "sub"
		}
		note := r.note()
		if r.Result == Fail && level == "top" {
			// A parent's own output rarely says why: name the failed subtests.
			var subs []string
			for _, s := range t.order {
				if rest, ok := strings.CutPrefix(s, n+"/"); ok && !strings.Contains(rest, "/") && (t.tests[s].Result == Fail || t.tests[s].Result == Hung) {
					subs = append(subs, rest)
				}
			}
			if len(subs) > 0 {
				note = strings.TrimSpace("failed subtests: " + strings.Join(subs, ", ") + "; " + note)
				note = strings.TrimSuffix(note, ";")
			}
		}
		fmt.Fprintf(&b, "%s\t%s\t%.2f\t%s\t%d\t%s\n", n, r.Result, r.Seconds, level, r.Round, strings.ReplaceAll(note, "\t", " "))
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// counts are the totals over top-level tests; a hang is a failure.
type counts struct{ pass, fail, skip, hung int }

func (t *tally) counts() counts {
	var c counts
	for _, r := range t.topLevel() {
		switch r.Result {
		case Pass:
			c.pass++
		case Skip:
			c.skip++
		case Hung:
			c.hung++
			c.fail++
		default:
			c.fail++
		}
	}
	return c
}

// expectation is one line of an EXPECT_FILE: a test name or a path.Match
// pattern of top-level test names that may fail or skip.
type expectation struct {
	pattern, why, file string
	line               int
}

// readExpectations reads EXPECT_FILE lines "<TestName or pattern> [why]";
// blank lines and lines starting with # are ignored.
func readExpectations(files []string) ([]expectation, error) {
	var out []expectation
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for i, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			pat, why, _ := strings.Cut(l, " ")
			if _, err := path.Match(pat, "x"); err != nil {
				return nil, fmt.Errorf("%s:%d: bad pattern %q: %w", f, i+1, pat, err)
			}
			out = append(out, expectation{pattern: pat, why: strings.TrimSpace(why), file: f, line: i + 1})
		}
	}
	return out, nil
}

// verdict compares the results with the expectations: unexpected are
// tests that failed, hung or skipped without being listed; stale are
// listed entries whose tests all ran and passed (remove them).
func verdict(recs []*testRecord, exp []expectation) (unexpected []string, stale []string) {
	matched := make([]bool, len(exp))
	ranButPassed := make([]bool, len(exp))
	for i := range exp {
		ranButPassed[i] = true
	}
	for _, r := range recs {
		listed := false
		for i, e := range exp {
			if ok, _ := path.Match(e.pattern, r.Name); ok {
				listed = true
				matched[i] = true
				if r.Result != Pass {
					ranButPassed[i] = false
				}
			}
		}
		if !listed && r.Result != Pass {
			unexpected = append(unexpected, r.Name+" ("+r.Result+")")
		}
	}
	for i, e := range exp {
		if matched[i] && ranButPassed[i] {
			stale = append(stale, fmt.Sprintf("%s (%s:%d)", e.pattern, e.file, e.line))
		}
	}
	sort.Strings(unexpected)
	return unexpected, stale
}
