package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

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

// percentile is the nearest-rank percentile; 100 is the maximum.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}

func medianFloat(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianUsage(us []usage) usage {
	var h, g, f []float64
	for _, u := range us {
		h, g, f = append(h, u.heap), append(g, u.goroutines), append(f, u.fds)
	}
	return usage{heap: medianFloat(h), goroutines: medianFloat(g), fds: medianFloat(f)}
}

func takeSnapshot() snapshot {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, _ := os.ReadDir("/proc/self/fd")
	return snapshot{heap: ms.HeapInuse, goroutines: runtime.NumGoroutine(), fds: len(fds)}
}

func fmtDur(s float64) string {
	if s == 0 {
		return "-"
	}
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// printTable writes the results as an aligned table.
func printTable(w io.Writer, res *results) {
	fmt.Fprintf(w, "%-14s %6s %4s %10s %10s %7s  %s\n", "measurement", "n", "par", "runckit", "floor", "ratio", "detail")
	for _, r := range res.records {
		par := "-"
		if r.Parallel > 0 {
			par = fmt.Sprint(r.Parallel)
		}
		if r.Name == "exec-burst" {
			par = fmt.Sprint(r.N)
		}
		ratio := "-"
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", r.Ratio)
		}
		detail := ""
		switch r.Name {
		case "exit-latency":
			detail = fmt.Sprintf("reap->sink p50 %.3fms p99 %.3fms max %.3fms (runckit = kill..last event)", r.P50Ms, r.P99Ms, r.MaxMs)
		case "scale-create":
			detail = fmt.Sprintf("per live container: heap %.0f B, %.2f goroutines, %.2f fds",
				r.HeapBytesPerContainer, r.GoroutinesPerContainer, r.FdsPerContainer)
		}
		fmt.Fprintf(w, "%-14s %6d %4s %10s %10s %7s  %s\n", r.Name, r.N, par, fmtDur(r.RunckitS), fmtDur(r.FloorS), ratio, detail)
	}
	for _, r := range res.records {
		if len(r.RunckitPhasesMs) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (n=%d, %d at a time), ms per lifecycle:\n", r.Name, r.N, max(r.Parallel, 1))
		fmt.Fprintf(w, "  runckit: %s\n", fmtPhases(r.RunckitPhasesMs))
		fmt.Fprintf(w, "  floor:   %s\n", fmtPhases(r.FloorPhasesMs))
	}
}

func fmtPhases(m map[string]float64) string {
	var parts []string
	for _, k := range phaseOrder(m) {
		parts = append(parts, fmt.Sprintf("%s %.3f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// Markers of the README block the bench rewrites.
const (
	readmeBegin = "<!-- bench:begin (written by go run ./bench) -->"
	readmeEnd   = "<!-- bench:end -->"
)

// updateReadme rewrites the results block of the README at path: a table
// of every record, and each lifecycle's phase breakdown.
func updateReadme(path string, recs []record) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q ... %q block", path, readmeBegin, readmeEnd)
	}
	var b strings.Builder
	b.WriteString(readmeBegin + "\n\n")
	b.WriteString("| measurement | n | par | runckit | floor | ratio | detail |\n|---|---|---|---|---|---|---|\n")
	for _, r := range recs {
		par, ratio, detail := "-", "-", ""
		if r.Parallel > 0 {
			par = fmt.Sprint(r.Parallel)
		}
		if r.Name == "exec-burst" {
			par = fmt.Sprint(r.N)
		}
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.3fx", r.Ratio)
		}
		switch r.Name {
		case "exit-latency":
			detail = fmt.Sprintf("reap to sink: p50 %.3f ms, p99 %.3f ms, max %.3f ms", r.P50Ms, r.P99Ms, r.MaxMs)
		case "scale-create":
			detail = fmt.Sprintf("per idle container: %.0f B heap, %.2f goroutines, %.2f fds", r.HeapBytesPerContainer, r.GoroutinesPerContainer, r.FdsPerContainer)
		case "lifecycle-seq", "lifecycle-par":
			detail = fmt.Sprintf("runckit's own work %.2f ms per lifecycle", r.RunckitPhasesMs["own"])
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s |\n", r.Name, r.N, par, fmtDur(r.RunckitS), fmtDur(r.FloorS), ratio, detail)
	}
	for _, r := range recs {
		if len(r.RunckitPhasesMs) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s, ms per lifecycle (median over rounds):\n\n", r.Name)
		fmt.Fprintf(&b, "- runckit: %s\n- floor: %s\n", fmtPhases(r.RunckitPhasesMs), fmtPhases(r.FloorPhasesMs))
	}
	b.WriteString("\n")
	s = s[:i] + b.String() + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// writeSVG draws median exec-burst wall time against N for runckit and the
// floor: a hand-written line chart, log-scaled N, linear time.
func writeSVG(path string, pts []burstPoint) error {
	const (
		width, height         = 640, 400
		left, right, top, bot = 70, 20, 40, 60
	)
	pw, ph := float64(width-left-right), float64(height-top-bot)

	minN, maxN := pts[0].n, pts[0].n
	var maxT time.Duration
	for _, p := range pts {
		minN = min(minN, p.n)
		maxN = max(maxN, p.n)
		maxT = max(maxT, p.runckit, p.floor)
	}
	lo, hi := math.Log10(float64(minN)), math.Log10(float64(maxN))
	if hi == lo {
		hi = lo + 1
	}
	x := func(n int) float64 { return left + (math.Log10(float64(n))-lo)/(hi-lo)*pw }
	yMax := niceCeil(float64(maxT) / float64(time.Millisecond))
	y := func(d time.Duration) float64 {
		return top + ph - float64(d)/float64(time.Millisecond)/yMax*ph
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="22" text-anchor="middle" font-size="15">Exec burst: N concurrent execs of true, median wall time</text>`+"\n", width/2)
	// Grid and y ticks.
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		yy := top + ph - ph*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, yy, width-right, yy)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yy+4, trimFloat(v))
	}
	// x ticks at the measured N.
	for _, p := range pts {
		xx := x(p.n)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", xx, top, xx, height-bot)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", xx, height-bot+16, p.n)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bot, width-right, height-bot)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, height-bot)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">concurrent execs N (log scale)</text>`+"\n", left+int(pw)/2, height-bot+38)
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">wall time (ms)</text>`+"\n", top+int(ph)/2, top+int(ph)/2)

	series := []struct {
		name  string
		color string
		get   func(burstPoint) time.Duration
	}{
		{"runckit (Exec+Start+Wait)", "#d62728", func(p burstPoint) time.Duration { return p.runckit }},
		{"floor (go-runc Exec, foreground)", "#1f77b4", func(p burstPoint) time.Duration { return p.floor }},
	}
	for i, s := range series {
		var pl []string
		for _, p := range pts {
			pl = append(pl, fmt.Sprintf("%.1f,%.1f", x(p.n), y(s.get(p))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.color, strings.Join(pl, " "))
		for _, p := range pts {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>N=%d: %.1f ms</title></circle>`+"\n",
				x(p.n), y(s.get(p)), s.color, p.n, float64(s.get(p))/float64(time.Millisecond))
		}
		ly := top + 10 + 18*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", left+12, ly, left+36, ly, s.color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+42, ly+4, s.name)
	}
	b.WriteString("</svg>\n")

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}
