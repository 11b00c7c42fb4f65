package runckit

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// validIDPattern is the documented grammar of container and exec IDs.
var validIDPattern = regexp.MustCompile(`^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$`)

// FuzzValidateID checks validateID against the documented grammar: it
// accepts exactly the IDs that match validIDPattern and are at most
// maxIDLength bytes long, rejects the rest with ErrInvalidArgument, and
// never panics.
func FuzzValidateID(f *testing.F) {
	for _, id := range []string{
		"", "a", "web-1", "a.b_c-d", "A9", strings.Repeat("x", 76), strings.Repeat("x", 77),
		"a/b", "..", ".", "a..b", "a b", "-a", "a-", "a__b", "a.-b", "ä", "a\x00b", "a\nb",
		"../../etc/passwd", "a.b.c.d", "0", "x-" + strings.Repeat("9", 74), "\xff", "a\u200bb",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := validateID("container", id)
		want := len(id) <= maxIDLength && validIDPattern.MatchString(id)
		if want && err != nil {
			t.Fatalf("validateID(%q) = %v, want it accepted", id, err)
		}
		if !want {
			if err == nil {
				t.Fatalf("validateID(%q) accepted an ID outside ^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$ or longer than %d", id, maxIDLength)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("validateID(%q) = %v, want ErrInvalidArgument", id, err)
			}
		}
	})
}

// FuzzParseStdioPath checks that parseStdioPath never panics, that what it
// accepts is an absolute path (or nothing, for an empty stream), and that it
// refuses with ErrInvalidArgument, binary URIs among them (those are
// loggers, which parseLoggerURI takes, never a path). parseLoggerURI never
// panics either, and what it takes names an absolute path.
func FuzzParseStdioPath(f *testing.F) {
	for _, raw := range []string{
		"", "/dev/null", "/tmp", "/no/such/file", "fifo:///run/x/stdout", "file:///var/log/x",
		"binary:///usr/bin/logger", "BINARY:///usr/bin/logger?x=1", "binary://host/x", "binary:relative",
		"http:///x", "fifo://relative/x", "fifo:relative", "file:/x", "file:x", "%zz", "fifo:///%2e%2e/x",
		"file:///a%00b", "fifo:///x#frag", "file:///x?q", ":", "//host/x", "relative/path", "file://",
		"FiLe:///x", "fifo:////x", "binary:", "\x00", "/\x00",
	} {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if u, ok, err := parseLoggerURI("StdoutPath", raw); ok && err == nil && !strings.HasPrefix(u.Path, "/") {
			t.Fatalf("parseLoggerURI(%q) = %v: not an absolute path", raw, u)
		} else if err != nil && (!ok || !errdefs.IsInvalidArgument(err)) {
			t.Fatalf("parseLoggerURI(%q) = %v, %v: want ErrInvalidArgument for a logger URI only", raw, ok, err)
		}
		path, fifo, err := parseStdioPath("StdoutPath", raw)
		scheme := ""
		if i := strings.IndexByte(raw, ':'); i > 0 {
			scheme = strings.ToLower(raw[:i])
		}
		if err != nil {
			if path != "" || fifo {
				t.Fatalf("parseStdioPath(%q) = %q, %v, %v: a refusal must return no path", raw, path, fifo, err)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("parseStdioPath(%q) = %v, want ErrInvalidArgument", raw, err)
			}
			if errors.Is(err, errdefs.ErrNotImplemented) && errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("parseStdioPath(%q) = %v carries two kinds", raw, err)
			}
			return
		}
		if raw == "" {
			if path != "" || fifo {
				t.Fatalf("parseStdioPath(\"\") = %q, %v, want nothing", path, fifo)
			}
			return
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("parseStdioPath(%q) = %q, not an absolute path", raw, path)
		}
		if raw[0] != '/' && scheme == "binary" {
			t.Fatalf("parseStdioPath(%q) = %q: a binary URI was accepted", raw, path)
		}
		if raw[0] != '/' && fifo != (scheme == "fifo") {
			t.Fatalf("parseStdioPath(%q) = fifo %v for scheme %q", raw, fifo, scheme)
		}
	})
}

// FuzzMountTarget checks that a rootfs mount target never resolves outside
// the bundle, and that a refused one is ErrInvalidArgument.
func FuzzMountTarget(f *testing.F) {
	for _, target := range []string{
		"", "rootfs", "scratch", "a/b", "/abs", "../x", "..", ".", "a/../../x", "a/../b", "./rootfs",
		"rootfs/..", "rootfs/../..", "x/../rootfs", "....", "..a", "a/..", "//x", "a\x00b",
	} {
		f.Add("/run/bundle", target)
	}
	f.Add("/", "x")
	f.Add("/b", "../b2/x")
	f.Fuzz(func(t *testing.T, bundle, target string) {
		if !strings.HasPrefix(bundle, "/") || strings.Contains(bundle, "//") ||
			(bundle != "/" && strings.HasSuffix(bundle, "/")) || strings.Contains(bundle, "/.") {
			return // bundles are absolute and clean (checkBundle makes them so)
		}
		got, err := mountTarget(bundle, Mount{Type: "tmpfs", Target: target})
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("mountTarget(%q, %q) = %v, want ErrInvalidArgument", bundle, target, err)
			}
			return
		}
		inside := got == bundle || strings.HasPrefix(got, strings.TrimSuffix(bundle, "/")+"/")
		if !inside {
			t.Fatalf("mountTarget(%q, %q) = %q, outside the bundle", bundle, target, got)
		}
		if strings.HasPrefix(target, "/") {
			t.Fatalf("mountTarget(%q, %q) accepted an absolute target", bundle, target)
		}
	})
}
