package runckit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// checkBundle resolves the bundle path and checks that it is a directory
// with a config.json (unless one is about to be written). A bundle or
// config.json that does not exist is ErrNotFound; one that is not usable is
// ErrInvalidArgument.
func checkBundle(dir string, needConfig bool) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("runckit: bundle path is empty: %w", errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("runckit: bundle %q: %v: %w", dir, err, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("runckit: bundle %s: %v: %w", abs, err, statErrKind(err))
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("runckit: bundle %s is not a directory: %w", abs, errdefs.ErrInvalidArgument)
	}
	if needConfig {
		cfgPath := filepath.Join(abs, "config.json")
		if _, err := os.Stat(cfgPath); err != nil {
			return "", fmt.Errorf("runckit: bundle config %s: %v: %w", cfgPath, err, statErrKind(err))
		}
	}
	return abs, nil
}

// statErrKind is the errdefs kind of a failure to find a bundle's file: a
// path that does not exist is ErrNotFound, anything else (a permission, a
// path through a file) ErrInvalidArgument.
func statErrKind(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errdefs.ErrNotFound
	}
	return errdefs.ErrInvalidArgument
}

// prepareBundle claims the bundle, writes config.json when a spec was
// given, and mounts the rootfs mounts, recording how to undo each step. It
// returns the spec the container will run.
func (c *Container) prepareBundle() (*specs.Spec, error) {
	// runckit keeps per-container files in the bundle, so a bundle serves
	// one container at a time: claim it before touching anything in it.
	if err := c.claimBundle(); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(c.bundle, "config.json")
	if c.cfg.spec != nil {
		data, err := json.Marshal(c.cfg.spec)
		if err != nil {
			return nil, fmt.Errorf("runckit: encode spec: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		old, readErr := os.ReadFile(cfgPath)
		if err := writeFileAtomic(cfgPath, data, 0o600); err != nil {
			return nil, fmt.Errorf("runckit: write %s: %w", cfgPath, err)
		}
		c.undo = append(c.undo, func() {
			if readErr == nil {
				writeFileAtomic(cfgPath, old, 0o600)
			} else {
				os.Remove(cfgPath)
			}
		})
	}
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("runckit: read %s: %v: %w", cfgPath, err, statErrKind(err))
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("runckit: parse %s: %v: %w", cfgPath, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, fmt.Errorf("runckit: %s: process.args is empty: %w", cfgPath, errdefs.ErrInvalidArgument)
	}
	if spec.Process.Terminal != c.cfg.stdio.Terminal {
		return nil, fmt.Errorf("runckit: %s: process.terminal is %v but Stdio.Terminal is %v: %w",
			cfgPath, spec.Process.Terminal, c.cfg.stdio.Terminal, errdefs.ErrInvalidArgument)
	}
	for _, m := range c.cfg.mounts {
		rm, err := mountRootfs(c.bundle, m)
		if err != nil {
			return nil, err
		}
		c.mounts = append(c.mounts, rm.target)
		c.undo = append(c.undo, func() { rm.unmount() })
	}
	return &spec, nil
}

// claimBundle creates the bundle's options file (runckit.json) with
// O_EXCL, which is what makes the bundle this container's: of two
// NewContainer calls on one bundle, in this program or two, exactly one
// creates it and the other fails with ErrAlreadyExists. Its undo removes the
// claim and the container's own files, last of all.
func (c *Container) claimBundle() error {
	opts, err := json.Marshal(c.cfg.runtimeOpts)
	if err != nil {
		return err
	}
	optsPath := filepath.Join(c.bundle, optionsFile)
	f, err := os.OpenFile(optsPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("runckit: bundle %s is in use by another container (%s exists): delete that container, or adopt it with LoadContainer: %w",
			c.bundle, optionsFile, errdefs.ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("runckit: claim bundle: create %s: %w", optsPath, err)
	}
	c.undo = append(c.undo, func() {
		os.Remove(filepath.Join(c.bundle, initPidFile(c.id)))
		os.Remove(filepath.Join(c.bundle, createLog(c.id)))
		os.Remove(optsPath) // the claim goes last: the bundle is free after it
	})
	_, err = f.Write(opts)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("runckit: write %s: %w", optsPath, err)
	}
	return nil
}

// runUndo reverses prepareBundle, last step first.
func (c *Container) runUndo() {
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	c.undo = nil
}

// sharesPIDNamespace reports whether the spec puts init in a PID namespace
// it does not own: the host's (no PID namespace of its own) or one joined by
// path (another container's, say). Such a namespace outlives init, and so do
// the container's other processes, which DESIGN.md rule 7 then has runckit
// kill when init exits.
func sharesPIDNamespace(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return true
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path != ""
		}
	}
	return true
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it into place, so that a reader never sees a partial file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	// No fsync: the rename makes the write atomic, which is what readers
	// need; durability across a power cut is moot for containers, which do
	// not survive one either.
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
