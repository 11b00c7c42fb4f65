package image_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/runckit/runckit/image"
)

// storeEmpty fails the test unless the store holds no unpacked root, no
// blob of the given layers and nothing half-made.
func storeEmpty(t *testing.T, s *image.Store) {
	t.Helper()
	for _, sub := range []string{"rootfs", "tmp", "blobs/sha256"} {
		entries, err := os.ReadDir(filepath.Join(s.Dir(), sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			t.Errorf("left in the store after a failure: %s/%s", sub, e.Name())
		}
	}
}

// layerDigest is the digest of the last layer of img, the one faults hit.
func layerDigest(t *testing.T, img v1.Image) string {
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ls[len(ls)-1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// small is a one-layer image (no busybox: these tests do not run it).
func small(t *testing.T, entries ...entry) v1.Image {
	if len(entries) == 0 {
		entries = []entry{file("hello", "hello\n")}
	}
	return buildImage(t, v1.Config{Cmd: []string{"/hello"}}, layer(t, entries...))
}

// TestImageRegistryFaults: a registry that answers 404, 500, drops the
// connection in the middle of a blob or serves a blob that does not match
// its digest gives the right kind, and leaves nothing in the store.
func TestImageRegistryFaults(t *testing.T) {
	t.Parallel()
	img := small(t, file("hello", strings.Repeat("0123456789", 100000)))
	blob := layerDigest(t, img)
	for _, tc := range []struct {
		name  string
		fault func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
		ref   string
		kind  func(error) bool
	}{
		{name: "unknown-ref", ref: "test/none:v1", kind: errdefs.IsNotFound},
		{name: "malformed-ref", ref: "test/UPPER::v1", kind: errdefs.IsInvalidArgument},
		{name: "500", kind: errdefs.IsUnavailable, fault: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if strings.Contains(r.URL.Path, "/manifests/") {
				http.Error(w, "boom", http.StatusInternalServerError)
				return true
			}
			return false
		}},
		{name: "blob-404", kind: errdefs.IsNotFound, fault: func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if strings.HasSuffix(r.URL.Path, blob) {
				http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
				return true
			}
			return false
		}},
		{name: "dropped-mid-blob", kind: errdefs.IsUnavailable, fault: func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if !strings.HasSuffix(r.URL.Path, blob) || r.Method != http.MethodGet {
				return false
			}
			rec := &recorder{header: http.Header{}}
			next.ServeHTTP(rec, r)
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.code)
			w.Write(rec.body.Bytes()[:rec.body.Len()/2])
			w.(http.Flusher).Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return true
		}},
		{name: "digest-mismatch", kind: errdefs.IsDataLoss, fault: func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if !strings.HasSuffix(r.URL.Path, blob) || r.Method != http.MethodGet {
				return false
			}
			rec := &recorder{header: http.Header{}}
			next.ServeHTTP(rec, r)
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.code)
			body := rec.body.Bytes()
			body[len(body)/2] ^= 0xff
			w.Write(body)
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var wrap func(string, httpHandler) httpHandler
			if tc.fault != nil {
				wrap = func(_ string, next httpHandler) httpHandler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if !tc.fault(w, r, next) {
							next.ServeHTTP(w, r)
						}
					})
				}
			}
			host := serve(t, img, "test/small:v1", wrap)
			ref := tc.ref
			if ref == "" {
				ref = "test/small:v1"
			}
			s := newStore(t)
			_, err := s.Pull(ctxFor(t), host+"/"+ref)
			if err == nil || !tc.kind(err) {
				t.Fatalf("Pull: %v, want another kind", err)
			}
			t.Logf("%s: %v", tc.name, err)
			storeEmpty(t, s)
		})
	}
}

// recorder is a ResponseWriter that keeps the response.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

// TestImageBadLayers: layers that climb out of the root, through a name,
// a hard link or a symlink, are refused (or, for a symlink to a directory
// of the image, followed inside the root), nothing is written outside the
// store, and nothing half-unpacked stays in it.
func TestImageBadLayers(t *testing.T) {
	t.Parallel()
	outside := t.TempDir() // a host directory a layer aims at
	for _, tc := range []struct {
		name    string
		entries []entry
	}{
		{"dotdot-name", []entry{file("../escaped", "x")}},
		{"dotdot-deep", []entry{dir("a"), file("a/../../escaped", "x")}},
		{"hardlink-out", []entry{hardlink("h", "../../../../etc/passwd")}},
		{"hardlink-missing", []entry{hardlink("h", "nope")}},
		{"abs-symlink-to-host-dir", []entry{symlink("out", outside), file("out/pwned", "x")}},
		{"rel-symlink-climbing", []entry{symlink("out", "../../../../.."+outside), file("out/pwned", "x")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			path := filepath.Join(t.TempDir(), "img.tar")
			tag, _ := name.NewTag("test/bad:v1")
			if err := tarball.WriteToFile(path, tag, small(t, tc.entries...)); err != nil {
				t.Fatal(err)
			}
			_, err := s.FromTarball(ctxFor(t), path, "")
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("FromTarball: %v, want ErrInvalidArgument", err)
			}
			if _, err := os.Stat(filepath.Join(s.Dir(), "tmp", "..", "escaped")); err == nil {
				t.Error("a ../ entry was written outside the root")
			}
			if entries, _ := os.ReadDir(outside); len(entries) > 0 {
				t.Errorf("written outside the store: %s/%s", outside, entries[0].Name())
			}
			for _, sub := range []string{"rootfs", "tmp"} {
				if entries, _ := os.ReadDir(filepath.Join(s.Dir(), sub)); len(entries) > 0 {
					t.Errorf("left in the store: %s/%s", sub, entries[0].Name())
				}
			}
		})
	}
	// An absolute symlink to a directory the image has is the image's own
	// directory, as in the container: a write through it lands inside.
	t.Run("abs-symlink-inside", func(t *testing.T) {
		s := newStore(t)
		path := filepath.Join(t.TempDir(), "img.tar")
		tag, _ := name.NewTag("test/bad:v1")
		img := small(t, dir("etc"), symlink("etclink", "/etc"), file("etclink/runckit-pwned", "x"))
		if err := tarball.WriteToFile(path, tag, img); err != nil {
			t.Fatal(err)
		}
		got, err := s.FromTarball(ctxFor(t), path, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/etc/runckit-pwned"); err == nil {
			os.Remove("/etc/runckit-pwned")
			t.Fatal("a layer wrote the host's /etc through an absolute symlink")
		}
		if _, err := os.Stat(filepath.Join(got.Rootfs, "etc/runckit-pwned")); err != nil {
			t.Errorf("the write through the symlink is not in the image's /etc: %v", err)
		}
	})
}

// TestImageTruncatedTarball: a docker-save tarball cut short is
// ErrDataLoss, and leaves nothing in the store.
func TestImageTruncatedTarball(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "img.tar")
	tag, _ := name.NewTag("test/small:v1")
	// Random content does not compress, so the layer is most of the file.
	noise := make([]byte, 1<<20)
	rand.Read(noise)
	if err := tarball.WriteToFile(path, tag, small(t, file("big", string(noise)))); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	for _, frac := range []int64{2, 10} {
		cut := filepath.Join(dir, "cut.tar")
		data, _ := os.ReadFile(path)
		os.WriteFile(cut, data[:fi.Size()*(frac-1)/frac], 0o600)
		s := newStore(t)
		_, err := s.FromTarball(ctxFor(t), cut, "")
		if !errdefs.IsDataLoss(err) && !errdefs.IsNotFound(err) {
			t.Errorf("truncated to %d/%d: %v, want ErrDataLoss", frac-1, frac, err)
		}
		storeEmpty(t, s)
	}
	s := newStore(t)
	if _, err := s.FromTarball(ctxFor(t), filepath.Join(dir, "none.tar"), ""); !errdefs.IsNotFound(err) {
		t.Errorf("missing tarball: %v, want ErrNotFound", err)
	}
}

// TestImageUnknownUser: an image whose User is not in its /etc/passwd
// gives no spec: ErrNotFound.
func TestImageUnknownUser(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for _, user := range []string{"ghost", "app:ghostgroup"} {
		img := buildImage(t, v1.Config{Cmd: []string{"sh"}, User: user},
			layer(t, dir("etc"), file("etc/passwd", "app:x:1000:1000::/:/bin/sh\n"), file("etc/group", "app:x:1000:\n")))
		got, err := s.Load(ctxFor(t), "test/user", img)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := got.Spec(); !errdefs.IsNotFound(err) {
			t.Errorf("Spec with User %q: %v, want ErrNotFound", user, err)
		}
	}
	// A numeric user needs no entry.
	img := buildImage(t, v1.Config{Cmd: []string{"sh"}, User: "4242:4343"}, layer(t, file("x", "")))
	got, err := s.Load(ctxFor(t), "test/user", img)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := got.Spec()
	if err != nil || spec.Process.User.UID != 4242 || spec.Process.User.GID != 4343 {
		t.Errorf("numeric user: %+v, %v", spec.Process.User, err)
	}
}

// TestImageConcurrentLoads: many loads of one image at once, from separate
// Store values on one directory (separate locks, as separate processes
// would have), all get the same unpacked root, made once.
func TestImageConcurrentLoads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := small(t, file("a", "a"), file("b", "b"))
	type res struct {
		root string
		err  error
	}
	ch := make(chan res, 8)
	for i := 0; i < 8; i++ {
		go func() {
			s, err := image.Open(dir)
			if err != nil {
				ch <- res{"", err}
				return
			}
			got, err := s.Load(context.Background(), "x", img)
			if err != nil {
				ch <- res{"", err}
				return
			}
			ch <- res{got.Rootfs, nil}
		}()
	}
	var first string
	for i := 0; i < 8; i++ {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if first == "" {
			first = r.root
		} else if r.root != first {
			t.Errorf("roots differ: %s vs %s", first, r.root)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) > 0 {
		t.Errorf("left in tmp: %v", entries[0].Name())
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "rootfs")); len(entries) != 1 {
		t.Errorf("%d roots unpacked, want 1", len(entries))
	}
	_ = errors.New
}
