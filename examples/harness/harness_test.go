// Package harness is what a test of yours looks like with runckittest and
// the image package: an HTTP server image, started for the test, waited
// for on its own port, reached through the container's own loopback.
package harness

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/runckit/runckit/image"
	"github.com/runckit/runckit/runckittest"
)

const body = "hello from busybox httpd\n"

var (
	once   sync.Once
	webImg *image.Image
	imgErr error
)

// webImage is the HTTP server image: busybox httpd serving /www. A real
// test would Pull it or read it with FromTarball; here it is built once
// (offline, from busybox-static), saved as a docker-save tarball and read
// back from it into a store shared by the whole test binary.
func webImage(t *testing.T) *image.Image {
	t.Helper()
	once.Do(func() { webImg, imgErr = buildWebImage() })
	if imgErr != nil {
		t.Fatal(imgErr)
	}
	return webImg
}

func TestHTTPServer(t *testing.T) {
	c := webImage(t).Start(t, runckittest.Options{
		Wait: []runckittest.Strategy{runckittest.ForPort(8080).WithTimeout(30 * time.Second)},
	})
	resp, err := c.HTTPClient().Get("http://localhost:8080/index.html")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != body {
		t.Errorf("GET /index.html: %d %q, want 200 %q", resp.StatusCode, got, body)
	}
}

// TestHTTPServerParallel runs the same image 20 times at once: every
// container listens on 8080 in a network namespace of its own.
func TestHTTPServerParallel(t *testing.T) {
	img := webImage(t)
	for i := 0; i < 20; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			c := img.Start(t, runckittest.Options{
				Files: []runckittest.File{{Path: "/www/id", Data: []byte(fmt.Sprint(i))}},
				Wait:  []runckittest.Strategy{runckittest.ForPort(8080).WithTimeout(60 * time.Second)},
			})
			resp, err := c.HTTPClient().Get("http://localhost:8080/id")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if string(got) != fmt.Sprint(i) {
				t.Errorf("container %d served id %q", i, got)
			}
		})
	}
}

func TestMain(m *testing.M) {
	if err := runckittest.Check(); err != nil {
		fmt.Fprintln(os.Stderr, "the harness example runs real containers:", err)
		os.Exit(1)
	}
	dir, _ := os.MkdirTemp("", "harness-example-store-")
	os.Setenv("RUNCKIT_IMAGE_CACHE", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildWebImage() (*image.Image, error) {
	bin, err := os.ReadFile(runckittest.BusyboxPath)
	if err != nil {
		return nil, err
	}
	applets, err := exec.Command(runckittest.BusyboxPath, "--list").Output()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		h.ModTime = time.Unix(1700000000, 0)
		h.Size = int64(len(data))
		tw.WriteHeader(h)
		tw.Write(data)
	}
	for _, d := range []string{"bin", "etc", "www", "tmp", "proc", "sys", "dev"} {
		add(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin)
	for _, a := range strings.Fields(string(applets)) {
		if a != "busybox" {
			add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
		}
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n"))
	add(&tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:\nwww:x:33:\n"))
	add(&tar.Header{Name: "www/index.html", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(body))
	tw.Close()
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"httpd", "-f", "-p", "8080", "-h", "/www"},
		User:       "www",
		Env:        []string{"PATH=/bin"},
	})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "harness-example-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tag, _ := name.NewTag("example/web:latest")
	path := dir + "/web.tar"
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return nil, err
	}
	store, err := image.Open(image.DefaultDir())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return store.FromTarball(ctx, path, "example/web:latest")
}
