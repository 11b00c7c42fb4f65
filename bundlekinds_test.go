package runckit_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestBundleMissingIsNotFound: a bundle directory or config.json that does
// not exist is ErrNotFound (unfixed: ErrInvalidArgument) and nothing else;
// a bundle path that is a file stays ErrInvalidArgument.
func TestBundleMissingIsNotFound(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	root := runckittest.RuntimeRoot(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		bundle string
		is     func(error) bool
		not    func(error) bool
	}{
		{"missing-dir", filepath.Join(t.TempDir(), "nope"), errdefs.IsNotFound, errdefs.IsInvalidArgument},
		{"missing-config", t.TempDir(), errdefs.IsNotFound, errdefs.IsInvalidArgument},
		{"file", file, errdefs.IsInvalidArgument, errdefs.IsNotFound},
	} {
		_, err := runckit.NewContainer(ctx, newID(t), tc.bundle, runckit.WithRuntimeRoot(root))
		if !tc.is(err) || tc.not(err) {
			t.Errorf("%s: NewContainer = %v, wrong kind", tc.name, err)
		}
	}
}
