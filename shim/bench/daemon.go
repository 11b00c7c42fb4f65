package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// daemon is the bench's own containerd: config, root, state and sockets all
// under the run's temp dir, so nothing touches /run/containerd or another
// helper's daemon.
type daemon struct {
	dir     string // the run's temp dir
	address string // gRPC socket
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile *os.File
	client  *containerd.Client
}

// startDaemon writes a config and starts containerd with binDir (holding the
// runckit shim) first on its PATH, then waits for it to answer.
func startDaemon(ctx context.Context, containerdBin, dir, binDir string) (*daemon, error) {
	d := &daemon{dir: dir, address: filepath.Join(dir, "c.sock"), exited: make(chan struct{})}
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.address, d.address+".ttrpc",
		filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	lf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	d.logFile = lf
	d.cmd = exec.Command(containerdBin, "--config", cfgPath)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	env := []string{"PATH=" + binDir + ":" + filepath.Dir(containerdBin) + ":" + os.Getenv("PATH")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	d.cmd.Env = env
	// Its own process group: a ^C to the bench reaches the bench, which
	// then stops containerd in order.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("containerd exited at start; see %s", lf.Name())
		default:
		}
		if _, err := os.Stat(d.address); err == nil {
			c, err := containerd.New(d.address, containerd.WithTimeout(5*time.Second))
			if err == nil {
				if ok, _ := c.IsServing(ctx); ok {
					d.client = c
					return d, nil
				}
				c.Close()
			}
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("containerd did not answer on %s in 30s; see %s", d.address, lf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends containerd (SIGTERM, then SIGKILL after 20 s).
func (d *daemon) stop() {
	if d.client != nil {
		d.client.Close()
	}
	_ = d.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		log.Print("containerd did not stop on SIGTERM; killing it")
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.logFile.Close()
}

// busyboxFiles are the rootfs entries of the bench image and of the floor's
// rootfs: /bin/busybox and the applets the bench runs.
var applets = []string{"sh", "true", "sleep"}
var emptyDirs = []string{"dev", "proc", "sys", "tmp", "etc", "run"}

// ociArchive builds an OCI image layout tarball (one uncompressed layer
// holding busybox) that containerd's Import takes, named ref.
func ociArchive(busybox, ref string) ([]byte, error) {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	for _, d := range append([]string{"bin"}, emptyDirs...) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}

	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	blobs := map[string][]byte{}
	add := func(mt string, b []byte) desc {
		dg := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
		blobs[dg] = b
		return desc{MediaType: mt, Digest: dg, Size: len(b)}
	}
	layerDesc := add("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"sh"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	})
	cfgDesc := add("application/vnd.oci.image.config.v1+json", cfg)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        cfgDesc,
		"layers":        []desc{layerDesc},
	})
	mDesc := add("application/vnd.oci.image.manifest.v1+json", manifest)
	mDesc.Annotations = map[string]string{"io.containerd.image.name": ref}
	mDesc.Platform = map[string]string{"architecture": "amd64", "os": "linux"}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []desc{mDesc},
	})

	var out bytes.Buffer
	ow := tar.NewWriter(&out)
	file := func(name string, b []byte) error {
		if err := ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := ow.Write(b)
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := file("index.json", index); err != nil {
		return nil, err
	}
	for dg, b := range blobs {
		if err := file("blobs/sha256/"+strings.TrimPrefix(dg, "sha256:"), b); err != nil {
			return nil, err
		}
	}
	if err := ow.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// importImage imports the busybox image and unpacks it for the default
// snapshotter.
func (d *daemon) importImage(ctx context.Context, busybox, ref string) (containerd.Image, error) {
	data, err := ociArchive(busybox, ref)
	if err != nil {
		return nil, err
	}
	imgs, err := d.client.Import(ctx, bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import: %d images, want 1", len(imgs))
	}
	img := containerd.NewImage(d.client, imgs[0])
	if err := img.Unpack(ctx, ""); err != nil {
		return nil, fmt.Errorf("unpack: %w", err)
	}
	return img, nil
}

// writeRootfs lays out the same files as the image in dir, for the floor.
func writeRootfs(busybox, dir string) error {
	for _, d := range append([]string{"bin"}, emptyDirs...) {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	src, err := os.Open(busybox)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "bin", "busybox"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}
