package image_test

import (
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/image"
	"github.com/runckit/runckit/runckittest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	runckittest.Cleanup()
	os.Exit(code)
}

func newStore(t *testing.T) *image.Store {
	t.Helper()
	s, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// serve runs go-containerregistry's registry on loopback and pushes img as
// repo:tag; it returns the registry's host:port.
func serve(t *testing.T, img v1.Image, repo string, wrap func(hostport string, h httpHandler) httpHandler) string {
	t.Helper()
	var h httpHandler = registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewUnstartedServer(nil)
	srv.Start()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	if wrap != nil {
		srv.Config.Handler = wrap(u.Host, h)
	} else {
		srv.Config.Handler = h
	}
	if img != nil {
		ref, err := name.ParseReference(u.Host + "/" + repo)
		if err != nil {
			t.Fatal(err)
		}
		// Pushed straight to the registry, past any fault of wrap.
		pushSrv := httptest.NewServer(h)
		defer pushSrv.Close()
		pu, _ := url.Parse(pushSrv.URL)
		pref, _ := name.ParseReference(pu.Host + "/" + repo)
		if err := remote.Write(pref, img); err != nil {
			t.Fatal(err)
		}
		_ = ref
	}
	return u.Host
}

// layered is the multi-layer image of the tests: an upper layer deletes a
// file and a directory of the lower, makes a directory opaque, adds a hard
// link, a setuid file, an xattr and a non-root user's files.
func layered(t *testing.T) v1.Image {
	t.Helper()
	lower := layer(t,
		dir("data"), file("data/keep", "keep\n"), file("data/gone", "gone\n"),
		dir("olddir"), file("olddir/x", "x\n"),
		dir("opq"), file("opq/a", "a\n"), file("opq/b", "b\n"),
		dir("hl"), file("hl/orig", "linked\n"),
	)
	upper := layer(t,
		file("data/.wh.gone", ""),
		file(".wh.olddir", ""),
		dir("opq"), file("opq/.wh..wh..opq", ""), file("opq/c", "c\n"),
		hardlink("hl/link", "hl/orig"),
		entry{name: "bin/suid", typ: '0', data: "#!/bin/sh\n", mode: 0o4755},
		entry{name: "home/app/owned", typ: '0', data: "mine\n", mode: 0o600, uid: 1000, gid: 1000,
			xattrs: map[string]string{"user.runckit": "xattr-value"}},
	)
	return buildImage(t, v1.Config{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{"sleep 100000"},
		Env:        []string{"GREETING=hello", "PATH=/bin"},
		WorkingDir: "/home/app",
		User:       "app",
		StopSignal: "SIGUSR1",
		Volumes:    map[string]struct{}{"/vol": {}},
	}, busyboxLayer(t), lower, upper)
}

// checkLayered runs the layered image and checks each property inside it.
func checkLayered(t *testing.T, img *image.Image) {
	t.Helper()
	c := img.Start(t, runckittest.Options{})
	ctx := ctxFor(t)
	script := strings.Join([]string{
		`test -e /data/keep || echo "keep missing"`,
		`test -e /data/gone && echo "whited-out file present"`,
		`test -e /olddir && echo "whited-out dir present"`,
		`test -e /opq/a && echo "opaque dir kept a"`,
		`test -e /opq/b && echo "opaque dir kept b"`,
		`test -e /opq/c || echo "opaque dir lost c"`,
		`[ "$(stat -c %i /hl/orig)" = "$(stat -c %i /hl/link)" ] || echo "hard link broken"`,
		`[ "$(stat -c %h /hl/orig)" = 2 ] || echo "link count $(stat -c %h /hl/orig)"`,
		`[ "$(stat -c %a:%u /bin/suid)" = "4755:0" ] || echo "suid $(stat -c %a:%u /bin/suid)"`,
		`[ "$(stat -c %a:%u:%g /home/app/owned)" = "600:1000:1000" ] || echo "owned $(stat -c %a:%u:%g /home/app/owned)"`,
		`[ "$(id -u):$(id -g)" = "1000:1000" ] || echo "user $(id -u):$(id -g)"`,
		`id -G | grep -qw 2000 || echo "groups $(id -G)"`,
		`[ "$(pwd)" = /home/app ] || echo "cwd $(pwd)"`,
		`[ "$GREETING:$HOME" = hello:/home/app ] || echo "env $GREETING:$HOME"`,
		`grep -q " /vol tmpfs" /proc/mounts || echo "no tmpfs volume"`,
		`cat /home/app/owned`,
	}, "\n")
	out, err := c.Command("sh", "-c", script).CombinedOutput(ctx)
	if err != nil {
		t.Fatalf("checks: %v: %s", err, out)
	}
	if string(out) != "mine\n" {
		t.Errorf("inside the container:\n%s", out)
	}
	// xattrs are not visible to busybox; read them on the unpacked root.
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(img.Rootfs, "home/app/owned"), "user.runckit", buf)
	if err != nil || string(buf[:n]) != "xattr-value" {
		t.Errorf("xattr user.runckit = %q, %v", buf[:max(n, 0)], err)
	}
	// The writable layer is the container's own: the shared root is untouched.
	if err := c.Command("sh", "-c", "echo new > /home/app/new").Run(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(img.Rootfs, "home/app/new")); err == nil {
		t.Error("a container's write reached the shared unpacked image")
	}
}

// TestImageFromRegistry pulls the layered image from a registry on
// loopback and checks it inside a running container; a second load is
// served from the store.
func TestImageFromRegistry(t *testing.T) {
	t.Parallel()
	host := serve(t, layered(t), "test/layered:v1", nil)
	s := newStore(t)
	ctx := ctxFor(t)
	img, err := s.Pull(ctx, host+"/test/layered:v1")
	if err != nil {
		t.Fatal(err)
	}
	checkLayered(t, img)
	st1, _ := os.Stat(img.Rootfs)
	img2, err := s.Pull(ctx, host+"/test/layered:v1")
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(img2.Rootfs)
	if img2.Rootfs != img.Rootfs || !os.SameFile(st1, st2) {
		t.Errorf("second pull unpacked again: %s vs %s", img.Rootfs, img2.Rootfs)
	}
	if img.Config.Config.StopSignal != "SIGUSR1" {
		t.Errorf("stop signal %q", img.Config.Config.StopSignal)
	}
	spec, err := img.Spec()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Annotations["org.opencontainers.image.stopSignal"] != "SIGUSR1" {
		t.Errorf("spec annotations %v", spec.Annotations)
	}
}

// TestImageFromLayout reads the image from an OCI layout directory.
func TestImageFromLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(layered(t), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "layered"})); err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	img, err := s.FromLayout(ctxFor(t), dir, "layered")
	if err != nil {
		t.Fatal(err)
	}
	checkLayered(t, img)
	if _, err := s.FromLayout(ctxFor(t), dir, "other"); !errdefs.IsNotFound(err) {
		t.Errorf("FromLayout of a ref it does not hold: %v, want ErrNotFound", err)
	}
}

// TestImageFromTarball reads the image from a docker-save tarball.
func TestImageFromTarball(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "layered.tar")
	tag, _ := name.NewTag("test/layered:v1")
	if err := tarball.WriteToFile(path, tag, layered(t)); err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	img, err := s.FromTarball(ctxFor(t), path, "test/layered:v1")
	if err != nil {
		t.Fatal(err)
	}
	checkLayered(t, img)
}
