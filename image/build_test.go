package image_test

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/runckit/runckit/runckittest"
)

// entry is one tar entry of a test layer.
type entry struct {
	name     string
	typ      byte
	data     string
	link     string
	mode     int64
	uid, gid int
	xattrs   map[string]string
}

func file(name, data string) entry {
	return entry{name: name, typ: tar.TypeReg, data: data, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) entry { return entry{name: name, typ: tar.TypeLink, link: target} }

// tarBytes writes entries as a tar stream.
func tarBytes(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Size: int64(len(e.data)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer makes a gzipped layer of entries.
func layer(t testing.TB, entries ...entry) v1.Layer {
	t.Helper()
	data := tarBytes(t, entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// busyboxLayer is a base layer: busybox-static with a link per applet, and
// an /etc/passwd and /etc/group with root, a user "app" (1000) and a group
// "extra" (2000) that app belongs to.
func busyboxLayer(t testing.TB) v1.Layer {
	t.Helper()
	if err := runckittest.Check(); err != nil {
		t.Skipf("image tests run containers: %v", err)
	}
	bin, err := os.ReadFile(runckittest.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(runckittest.BusyboxPath, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	entries := []entry{dir("bin"), {name: "bin/busybox", typ: tar.TypeReg, data: string(bin), mode: 0o755},
		dir("etc"), dir("tmp"), dir("proc"), dir("sys"), dir("dev"), dir("root"),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
		file("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
		{name: "home/app", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			entries = append(entries, symlink("bin/"+a, "busybox"))
		}
	}
	return layer(t, entries...)
}

// buildImage stacks layers over an empty image and sets its config.
func buildImage(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
