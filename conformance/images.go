package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// stamp is the time of every file and image record, so the same busybox
// binary always gives the same digests.
var stamp = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// served is one image reference the suite pulls, and what it holds.
type served struct {
	host, repo, tag string
	// content: "busybox" (a runnable busybox rootfs), "copyup" (plus the
	// layers and volumes of upstream's volume-copy-up), "ownership" (plus
	// what the user-namespace tests look at), "pause" (a placeholder
	// /pause) or "foreign" (no platform of this machine).
	content   string
	platforms []string
}

func (s served) ref() string { return s.host + "/" + s.repo + ":" + s.tag }

// Platform lists: the tests that pull all or some platforms count the
// manifests and blobs of an index, so the indexes are multi-platform as
// upstream's are.
var (
	manyPlatforms = []string{"linux/amd64", "linux/386", "linux/arm/v6", "linux/arm/v7",
		"linux/arm64/v8", "linux/ppc64le", "linux/riscv64", "linux/s390x"}
	fewPlatforms   = []string{"linux/amd64", "linux/arm64/v8", "linux/ppc64le", "linux/s390x"}
	pausePlatforms = []string{"linux/amd64", "linux/arm/v7", "linux/arm64/v8", "linux/ppc64le", "linux/s390x"}
)

// catalog holds the references containerd v2.4's integration/client pulls
// on Linux: integration/images/image_list.go and the names written into
// the tests. A newer containerd that pulls more needs rows here.
var catalog = []served{
	{"ghcr.io", "containerd/busybox", "1.36", "busybox", manyPlatforms},
	{"ghcr.io", "containerd/alpine", "3.14.0", "busybox", manyPlatforms},
	{"ghcr.io", "containerd/nginx", "1.27.0", "busybox", fewPlatforms},
	{"ghcr.io", "containerd/volume-copy-up", "2.2", "copyup", fewPlatforms},
	{"ghcr.io", "containerd/volume-ownership", "2.1", "ownership", fewPlatforms},
	// Pulled on Linux by a test that expects the pull to fail.
	{"ghcr.io", "containerd/windows/nanoserver", "1809", "foreign", []string{"windows/amd64:10.0.17763.6532"}},
	{"registry.k8s.io", "e2e-test-images/busybox", "1.29-2", "busybox", fewPlatforms},
	{"registry.k8s.io", "pause", "3.10.2", "pause", pausePlatforms},
	{"registry.k8s.io", "pause", "3.6", "pause", pausePlatforms},
}

// decoyHosts are registries the Linux suite should never reach. They point
// at the local server too, so a pull nobody planned for gets a 404 here
// instead of going to the internet.
var decoyHosts = []string{"docker.io", "registry-1.docker.io", "index.docker.io", "auth.docker.io",
	"quay.io", "gcr.io", "k8s.gcr.io", "mcr.microsoft.com", "cplatpublic.azurecr.io",
	"pkg-containers.githubusercontent.com"}

// registryHosts lists every host name mapped to loopback for the run.
func registryHosts() []string {
	seen := map[string]bool{}
	var hs []string
	for _, s := range catalog {
		if !seen[s.host] {
			seen[s.host] = true
			hs = append(hs, s.host)
		}
	}
	for _, h := range decoyHosts {
		if !seen[h] {
			seen[h] = true
			hs = append(hs, h)
		}
	}
	return hs
}

// parsePlatform reads "os/arch[/variant][:osversion]".
func parsePlatform(s string) v1.Platform {
	var p v1.Platform
	if i := strings.Index(s, ":"); i >= 0 {
		p.OSVersion = s[i+1:]
		s = s[:i]
	}
	f := strings.Split(s, "/")
	p.OS, p.Architecture = f[0], f[1]
	if len(f) > 2 {
		p.Variant = f[2]
	}
	return p
}

// fsEntry is one file of a layer.
type fsEntry struct {
	name     string
	kind     byte
	mode     int64
	uid, gid int
	body     []byte
	target   string
}

func dirEntry(name string, mode int64) fsEntry {
	return fsEntry{name: name, kind: tar.TypeDir, mode: mode}
}
func fileEntry(name string, mode int64, body string) fsEntry {
	return fsEntry{name: name, kind: tar.TypeReg, mode: mode, body: []byte(body)}
}
func linkEntry(name, target string) fsEntry {
	return fsEntry{name: name, kind: tar.TypeSymlink, mode: 0o777, target: target}
}

// makeLayer writes the entries as an OCI gzip layer.
func makeLayer(entries []fsEntry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Typeflag: e.kind, Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: stamp, Linkname: e.target, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.kind == tar.TypeDir {
			h.Name = strings.TrimSuffix(h.Name, "/") + "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// accounts are Debian's: the user-namespace tests run as backup (34) and
// chown to nobody:nogroup.
const passwdFile = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`

const groupFile = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
www-data:x:33:
backup:x:34:
staff:x:50:
users:x:100:
nogroup:x:65534:
`

// ncShim stands in for busybox's nc. Debian's busybox-static builds the
// small nc, which sets no signal handler, so as a container's PID 1 it
// never dies of SIGTERM and TestBindLowPortNonOpt waits forever; the nc of
// upstream's busybox image exits 128+signal. Stdin is handed over on fd 3
// because ash gives a background job /dev/null.
const ncShim = `#!/bin/sh
# runckit conformance: exit on TERM/INT/QUIT like upstream busybox's nc
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 131' QUIT
exec 3<&0
/bin/busybox nc "$@" <&3 3<&- &
wait $!
`

// rootfsEntries is a busybox system: the binary, a link per applet in /bin
// and at the applet's usual path, and enough of /etc for user lookups.
func rootfsEntries(busybox []byte, applets []string) []fsEntry {
	es := []fsEntry{}
	for _, d := range []string{"bin", "dev", "etc", "home", "lib", "root", "run", "sbin", "usr", "usr/bin",
		"usr/sbin", "var", "var/backups", "var/spool"} {
		mode := int64(0o755)
		if d == "root" {
			mode = 0o700
		}
		es = append(es, dirEntry(d, mode))
	}
	es = append(es, dirEntry("proc", 0o555), dirEntry("sys", 0o555), dirEntry("tmp", 0o1777), dirEntry("var/tmp", 0o1777),
		fsEntry{name: "bin/busybox", kind: tar.TypeReg, mode: 0o755, body: busybox},
		fileEntry("bin/nc", 0o755, ncShim),
		fileEntry("etc/passwd", 0o644, passwdFile),
		fileEntry("etc/group", 0o644, groupFile),
		fileEntry("etc/hostname", 0o644, "busybox\n"),
		fileEntry("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n"),
		fileEntry("etc/nsswitch.conf", 0o644, "passwd: files\ngroup: files\nhosts: files dns\n"))
	have := map[string]bool{"bin/busybox": true, "bin/nc": true}
	for _, a := range applets {
		a = strings.TrimPrefix(a, "/")
		name := path.Base(a)
		if name == "busybox" || name == "" {
			continue
		}
		target := "/bin/busybox"
		if name == "nc" {
			target = "/bin/nc"
		}
		for _, p := range []string{"bin/" + name, a} {
			if !have[p] {
				have[p] = true
				es = append(es, linkEntry(p, target))
			}
		}
	}
	return es
}

// imageSet builds the catalog's indexes from one static busybox.
type imageSet struct {
	rootfs v1.Layer
}

func newImageSet(busyboxPath string) (*imageSet, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.Command(busyboxPath, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full (a busybox-static is needed): %w", busyboxPath, err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	l, err := makeLayer(rootfsEntries(bb, applets))
	if err != nil {
		return nil, err
	}
	return &imageSet{rootfs: l}, nil
}

// placeholder is a layer whose content names the reference and platform,
// so no two images share a blob by chance (the fetch tests count blobs).
func placeholder(ref, plat, file string) (v1.Layer, error) {
	return makeLayer([]fsEntry{fileEntry(file, 0o755, "runckit conformance placeholder: "+ref+" "+plat+"\n")})
}

// index builds the multi-platform OCI index of one catalog entry.
func (s *imageSet) index(e served) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, ps := range e.platforms {
		p := parsePlatform(ps)
		runnable := p.OS == runtime.GOOS && p.Architecture == runtime.GOARCH && e.content != "pause" && e.content != "foreign"
		cfg := v1.Config{
			Env:    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd:    []string{"sh"},
			Labels: map[string]string{"dev.runckit.conformance.ref": e.ref(), "dev.runckit.conformance.platform": ps},
		}
		var adds []mutate.Addendum
		addLayer := func(l v1.Layer, err error) error {
			if err != nil {
				return err
			}
			adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{Created: v1.Time{Time: stamp}, CreatedBy: "runckit conformance"}})
			return nil
		}
		var err error
		switch {
		case e.content == "pause":
			cfg.Cmd, cfg.Env, cfg.Entrypoint, cfg.User = nil, nil, []string{"/pause"}, "65535:65535"
			err = addLayer(placeholder(e.ref(), ps, "pause"))
		case !runnable:
			err = addLayer(placeholder(e.ref(), ps, "placeholder"))
		default:
			err = addLayer(s.rootfs, nil)
			switch e.content {
			case "copyup":
				// As upstream's Dockerfile: three layers and three volumes,
				// two with awkward names.
				for _, d := range []string{"test_dir", "C:/weird_test_dir", ":colon_prefixed"} {
					f := map[string]string{"test_dir": "test_file", "C:/weird_test_dir": "weird_test_file", ":colon_prefixed": "colon_prefixed_file"}[d]
					es := []fsEntry{}
					if strings.Contains(d, "/") {
						es = append(es, dirEntry(path.Dir(d), 0o755))
					}
					es = append(es, dirEntry(d, 0o755), fileEntry(d+"/"+f, 0o644, "test_content\n"))
					if err == nil {
						err = addLayer(makeLayer(es))
						adds[len(adds)-1].History.CreatedBy = "mkdir /" + d
					}
				}
				cfg.Volumes = map[string]struct{}{"/test_dir": {}, "C:/weird_test_dir": {}, "/:colon_prefixed": {}}
			case "ownership":
				// Upstream's image is Ubuntu; the tests only look at bash,
				// a setuid /usr/bin/passwd and /test_dir owned by nobody.
				err = addLayer(makeLayer([]fsEntry{
					fileEntry("bin/bash", 0o755, "#!/bin/sh\nexec /bin/busybox sh \"$@\"\n"),
					fileEntry("usr/bin/passwd", 0o4755, "#!/bin/sh\nexec /bin/busybox passwd \"$@\"\n"),
					{name: "test_dir", kind: tar.TypeDir, mode: 0o755, uid: 65534, gid: 65534},
				}))
				cfg.Volumes = map[string]struct{}{"/test_dir": {}}
			}
		}
		if err != nil {
			return nil, err
		}
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		img, err = mutate.ConfigFile(img, &v1.ConfigFile{Created: v1.Time{Time: stamp}, OS: p.OS, Architecture: p.Architecture,
			Variant: p.Variant, OSVersion: p.OSVersion, Config: cfg, RootFS: v1.RootFS{Type: "layers"}})
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, adds...); err != nil {
			return nil, err
		}
		pp := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pp}})
	}
	return idx, nil
}
