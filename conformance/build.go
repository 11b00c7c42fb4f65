package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// tools are what the runner builds for one containerd version.
type tools struct {
	bin    string // containerd, ctr, containerd-shim-runc-v2, runc-fp, client.test
	pkgDir string // integration/client in the module cache (the tests read testdata/ from it)
}

const containerdModule = "github.com/containerd/containerd/v2"

// goCmd runs the go command with the build settings the suite needs and
// its output on our stderr.
func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// buildTools installs containerd, ctr and the stock runc shim at version
// with go install, and builds the integration/client test binary and the
// runc-fp failpoint wrapper from the same module source. Each step is
// skipped when its output exists for this version already.
func buildTools(work, version string) (*tools, error) {
	t := &tools{bin: filepath.Join(work, "containerd-"+version)}
	if err := os.MkdirAll(t.bin, 0o755); err != nil {
		return nil, err
	}
	have := func(names ...string) bool {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(t.bin, n)); err != nil {
				return false
			}
		}
		return true
	}
	// btrfs needs C headers a fresh machine lacks; containerd's own
	// integration CI builds without it too.
	if !have("containerd", "ctr", "containerd-shim-runc-v2") {
		say("installing containerd, ctr, containerd-shim-runc-v2 %s into %s", version, t.bin)
		var pkgs []string
		for _, c := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
			pkgs = append(pkgs, containerdModule+"/cmd/"+c+"@"+version)
		}
		if err := goCmd(work, []string{"GOBIN=" + t.bin, "GOFLAGS=-tags=no_btrfs -buildvcs=false"}, append([]string{"install"}, pkgs...)...); err != nil {
			return nil, err
		}
	}
	// go install has put the module in the module cache: the test source
	// is exactly the source of the binaries.
	out, err := exec.Command("go", "mod", "download", "-json", containerdModule+"@"+version).Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s@%s: %w", containerdModule, version, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return nil, fmt.Errorf("go mod download %s@%s: no module dir in %q", containerdModule, version, out)
	}
	t.pkgDir = filepath.Join(mod.Dir, "integration", "client")
	if _, err := os.Stat(filepath.Join(t.pkgDir, "client_test.go")); err != nil {
		return nil, fmt.Errorf("containerd %s has no integration/client tests in its main module (releases that keep them in a nested module are not supported): %w", version, err)
	}
	if _, err := os.Stat(filepath.Join(t.pkgDir, "go.mod")); err == nil {
		return nil, fmt.Errorf("containerd %s keeps integration/client in a nested module, which the module proxy does not serve with its replace targets; use a v2.1+ release", version)
	}
	if !have("client.test", "runc-fp") {
		say("building the integration/client test binary and runc-fp (%s)", version)
		env := []string{"GOFLAGS=-buildvcs=false -mod=readonly"}
		if err := goCmd(mod.Dir, env, "test", "-c", "-tags", "no_btrfs", "-o", filepath.Join(t.bin, "client.test"), "./integration/client"); err != nil {
			return nil, err
		}
		// TestIssue9103 and TestIssue10589 run runc through this wrapper
		// (BinaryName: runc-fp), as containerd's CI installs it.
		if err := goCmd(mod.Dir, env, "build", "-o", filepath.Join(t.bin, "runc-fp"), "./integration/failpoint/cmd/runc-fp"); err != nil {
			return nil, err
		}
	}
	return t, nil
}
