package runckit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// containerd's TestIssue13030: an overlay of many layers whose lowerdir
// option is longer than a page (and than the 256 bytes fsconfig takes for
// one string) mounts, each layer in its place. Unfixed, the whole lowerdir
// went to fsconfig as one string and the mount failed.
func TestOverlayWithLongLowerdir(t *testing.T) {
	base := filepath.Join(t.TempDir(), strings.Repeat("long-snapshot-directory-name-", 3))
	var lowers []string
	for i := 0; i < 40; i++ {
		dir := filepath.Join(base, fmt.Sprintf("snapshots/%03d", i), strings.Repeat("x", 40), "fs")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("layer-%03d", i)), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		// The first layer listed is the top one: its copy of "shared" wins.
		if err := os.WriteFile(filepath.Join(dir, "shared"), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		lowers = append(lowers, dir)
	}
	lowerdir := "lowerdir=" + strings.Join(lowers, ":")
	if len(lowerdir) <= os.Getpagesize() {
		t.Fatalf("lowerdir is %d bytes, want more than a page", len(lowerdir))
	}
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bundle := t.TempDir()
	target := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	rm, err := mountRootfs(bundle, Mount{Type: "overlay", Source: "overlay",
		Options: []string{lowerdir, "upperdir=" + upper, "workdir=" + work}})
	if err != nil {
		t.Fatalf("overlay with a %d-byte lowerdir: %v", len(lowerdir), err)
	}
	defer rm.unmount()
	for i := 0; i < 40; i++ {
		if _, err := os.Stat(filepath.Join(target, fmt.Sprintf("layer-%03d", i))); err != nil {
			t.Errorf("layer %d not in the overlay: %v", i, err)
		}
	}
	if data, err := os.ReadFile(filepath.Join(target, "shared")); err != nil || string(data) != "0" {
		t.Errorf("shared = %q, %v; want the top layer's \"0\"", data, err)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); err != nil {
		t.Errorf("write into the overlay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "new")); err != nil {
		t.Errorf("the write did not reach upperdir: %v", err)
	}
	if err := rm.unmount(); err != nil {
		t.Fatal(err)
	}
}
