package image_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

// TestImageStoreWriteFailureIsNotUnavailable: a pull from a healthy
// registry into a store that can not be written fails with the store's own
// error, not ErrUnavailable, which says that the registry failed and that
// trying again may help. (A bare errno satisfies net.Error, which once
// made every local failure of a pull look like a network one.)
func TestImageStoreWriteFailureIsNotUnavailable(t *testing.T) {
	t.Parallel()
	host := serve(t, small(t), "fail/img", nil)
	s := newStore(t)
	tmp := filepath.Join(s.Dir(), "tmp")
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil { // entries are made in tmp/: ENOTDIR
		t.Fatal(err)
	}
	_, err := s.Pull(ctxFor(t), host+"/fail/img:latest")
	if err == nil {
		t.Fatal("pull into a store whose tmp/ is a file succeeded")
	}
	if errdefs.IsUnavailable(err) {
		t.Errorf("pull into a broken store: %v: is ErrUnavailable, want the store's error", err)
	}
	if !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("pull into a broken store: %v, want ENOTDIR", err)
	}
}
