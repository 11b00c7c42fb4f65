// Package harness benchmarks runckittest against testcontainers-go on one
// scenario: start an HTTP server image (busybox httpd serving a file), wait
// for its port, one GET, tear down. It is a module of its own so that
// neither runckit nor runckittest depends on testcontainers-go; run it with
// ./run.sh (see README.md).
package harness

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Body is what the image's httpd serves at /index.html.
const Body = "hello from busybox httpd\n"

// Tag names the image in the docker-save tarball and the OCI layout.
const Tag = "runckit-bench/web:latest"

// Port is where the image's httpd listens.
const Port = 8080

// WebImage builds the HTTP server image from a static busybox: one layer
// with busybox, its applet links, /etc/passwd and /www/index.html; httpd
// in the foreground on Port as user www.
func WebImage(busybox string) (v1.Image, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
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
	add(&tar.Header{Name: "www/index.html", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(Body))
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	return mutate.Config(img, v1.Config{
		Entrypoint: []string{"httpd", "-f", "-p", fmt.Sprint(Port), "-h", "/www"},
		User:       "www",
		Env:        []string{"PATH=/bin"},
	})
}

// WriteImage writes img in dir twice: web.tar, a docker-save tarball (what
// docker load reads), and oci/, an OCI image layout whose one manifest is
// annotated with Tag.
func WriteImage(dir string, img v1.Image) (tarPath, layoutDir string, err error) {
	tag, err := name.NewTag(Tag)
	if err != nil {
		return "", "", err
	}
	tarPath = filepath.Join(dir, "web.tar")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		return "", "", err
	}
	layoutDir = filepath.Join(dir, "oci")
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		return "", "", err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": Tag})); err != nil {
		return "", "", err
	}
	return tarPath, layoutDir, nil
}
