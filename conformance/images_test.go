package main

import (
	"archive/tar"
	"io"
	"log"
	"os"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestImagesServedPerHost builds the catalog into an in-memory registry
// and pulls through the read-only, host-prefixing front: the seed image is
// a multi-platform index whose native image runs busybox, repositories of
// one host are not visible under another, and pushes are refused.
func TestImagesServedPerHost(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs a static busybox at /bin/busybox (apt-get install busybox-static)")
	}
	set, err := newImageSet("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	store := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if err := fill(store, set); err != nil {
		t.Fatal(err)
	}
	front := &readOnly{store: store, log: testLogger(t)}
	pull := func(ref string) (v1.ImageIndex, error) {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return remote.Index(r, remote.WithTransport(inProcess{front}))
	}
	idx, err := pull("ghcr.io/containerd/busybox:1.36")
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(manyPlatforms) {
		t.Errorf("%d manifests, want %d", len(im.Manifests), len(manyPlatforms))
	}
	var native v1.Image
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH {
			if native, err = idx.Image(d.Digest); err != nil {
				t.Fatal(err)
			}
		}
	}
	if native == nil {
		t.Fatalf("no linux/%s image in the index", runtime.GOARCH)
	}
	ls, err := native.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("layers %d, %v", len(ls), err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	found := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found[h.Name] = true
	}
	for _, want := range []string{"bin/busybox", "bin/sh", "bin/sleep", "bin/nc", "etc/passwd"} {
		if !found[want] {
			t.Errorf("rootfs has no %s", want)
		}
	}
	if _, err := pull("registry.k8s.io/containerd/busybox:1.36"); err == nil {
		t.Error("ghcr.io's repository is served under registry.k8s.io too")
	}
	if _, err := pull("registry.k8s.io/pause:3.10.2"); err != nil {
		t.Errorf("pause: %v", err)
	}
	r, _ := name.ParseReference("ghcr.io/containerd/busybox:evil", name.Insecure)
	if err := remote.WriteIndex(r, idx, remote.WithTransport(inProcess{front})); err == nil {
		t.Error("a push through the served front was accepted")
	}
}

func testLogger(t *testing.T) *log.Logger { return log.New(io.Discard, "", 0) }
