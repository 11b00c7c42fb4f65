package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Store is a content-addressed cache of image layers and unpacked root
// filesystems in one directory, shared by tests, packages and runs: every
// entry is made in a temporary name and renamed into place once complete,
// under a file lock, so concurrent processes make each one once and never
// see half of one.
//
//	dir/blobs/sha256/HEX   an uncompressed layer, named by its diff ID
//	dir/rootfs/HEX         the layers of an image applied in order, named
//	                       by the digest of their diff IDs; read-only use
//	dir/tmp/               entries being made
//	dir/locks/             one lock file per entry
type Store struct {
	dir string
	// Keychain gives registry credentials; the default reads the docker
	// config (~/.docker/config.json, $DOCKER_CONFIG).
	Keychain authn.Keychain
	// Transport is the HTTP transport for registries; nil is the default.
	Transport http.RoundTripper
	// Platform picks an image out of an index; the default is linux and
	// the program's architecture.
	Platform v1.Platform
}

// Open returns the store in dir, making it if needed.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("image: store directory is empty: %w", errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image: store %q: %v: %w", dir, err, errdefs.ErrInvalidArgument)
	}
	for _, sub := range []string{"blobs/sha256", "rootfs", "tmp", "locks"} {
		if err := os.MkdirAll(filepath.Join(abs, sub), 0o700); err != nil {
			return nil, fmt.Errorf("image: store %s: %w", abs, err)
		}
	}
	return &Store{dir: abs, Keychain: authn.DefaultKeychain,
		Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}, nil
}

// DefaultDir is the store shared by every program of the machine's root
// user: $RUNCKIT_IMAGE_CACHE, or runckit/images under the user cache
// directory.
func DefaultDir() string {
	if d := os.Getenv("RUNCKIT_IMAGE_CACHE"); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "runckit", "images")
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Image is an image whose root filesystem is unpacked in a Store, ready
// for containers: each gets its own writable layer over Rootfs (see
// Image.Bundle).
type Image struct {
	// Ref is what the image was asked for by.
	Ref string
	// Digest is the image's manifest digest.
	Digest string
	// Config is the image's configuration.
	Config v1.ConfigFile
	// Rootfs is the unpacked root filesystem, shared: never write to it.
	Rootfs string
}

// Pull fetches ref ("busybox:latest", "host:5000/repo@sha256:...") from its
// registry and unpacks it. A malformed ref is ErrInvalidArgument, an image
// the registry does not have ErrNotFound, refused credentials
// ErrPermissionDenied, a registry that fails or goes away ErrUnavailable,
// content that does not match its digest ErrDataLoss.
func (s *Store) Pull(ctx context.Context, ref string, opts ...remote.Option) (*Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image: reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(s.Keychain),
		remote.WithPlatform(s.Platform),
		// Few, quick retries: a test that waits on a dead registry should
		// fail in seconds.
		remote.WithRetryBackoff(remote.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 3}),
	}
	if s.Transport != nil {
		ropts = append(ropts, remote.WithTransport(s.Transport))
	}
	ropts = append(ropts, opts...)
	img, err := remote.Image(r, ropts...)
	if err != nil {
		return nil, fmt.Errorf("image: pull %s: %w", ref, kindOf(err, true))
	}
	return s.load(ctx, ref, img, true)
}

// FromLayout reads an image from an OCI image layout directory. ref picks
// the manifest by its org.opencontainers.image.ref.name annotation or its
// digest; "" takes the layout's only image.
func (s *Store) FromLayout(ctx context.Context, dir, ref string) (*Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("image: OCI layout %s: %w", dir, kindOf(err, false))
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("image: OCI layout %s: %w", dir, kindOf(err, false))
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image: OCI layout %s: index: %v: %w", dir, err, errdefs.ErrDataLoss)
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		if ref == "" || d.Annotations["org.opencontainers.image.ref.name"] == ref || d.Digest.String() == ref {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("image: OCI layout %s has no image %q: %w", dir, ref, errdefs.ErrNotFound)
	case len(found) > 1:
		return nil, fmt.Errorf("image: OCI layout %s holds %d images; name one: %w", dir, len(found), errdefs.ErrInvalidArgument)
	}
	img, err := p.Image(found[0].Digest)
	if err != nil {
		return nil, fmt.Errorf("image: OCI layout %s: %w", dir, kindOf(err, false))
	}
	if ref == "" {
		ref = dir
	}
	return s.load(ctx, ref, img, false)
}

// FromTarball reads an image from a `docker save` tarball. tag picks one
// of its images ("repo:tag"); "" takes its only image.
func (s *Store) FromTarball(ctx context.Context, path, tag string) (*Image, error) {
	var t *name.Tag
	if tag != "" {
		tt, err := name.NewTag(tag)
		if err != nil {
			return nil, fmt.Errorf("image: tag %q: %v: %w", tag, err, errdefs.ErrInvalidArgument)
		}
		t = &tt
	}
	img, err := tarball.ImageFromPath(path, t)
	if err != nil {
		return nil, fmt.Errorf("image: tarball %s: %w", path, kindOf(err, false))
	}
	ref := tag
	if ref == "" {
		ref = path
	}
	return s.load(ctx, ref, img, false)
}

// Load unpacks any go-containerregistry image into the store.
func (s *Store) Load(ctx context.Context, ref string, img v1.Image) (*Image, error) {
	return s.load(ctx, ref, img, true)
}

func (s *Store) load(ctx context.Context, ref string, img v1.Image, remote bool) (*Image, error) {
	fail := func(what string, err error) (*Image, error) {
		return nil, fmt.Errorf("image: %s: %s: %w", ref, what, kindOf(err, remote))
	}
	digest, err := img.Digest()
	if err != nil {
		return fail("manifest", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fail("config", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fail("layers", err)
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("image: %s: %d layers but %d diff IDs in the config: %w",
			ref, len(layers), len(cfg.RootFS.DiffIDs), errdefs.ErrDataLoss)
	}
	key := rootfsKey(cfg.RootFS.DiffIDs)
	out := &Image{Ref: ref, Digest: digest.String(), Config: *cfg, Rootfs: filepath.Join(s.dir, "rootfs", key)}
	err = s.once(ctx, "rootfs-"+key, out.Rootfs, func(tmp string) error {
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
		u, err := newUnpacker(tmp)
		if err != nil {
			return err
		}
		defer u.close()
		for i, l := range layers {
			blob, err := s.blob(ctx, l, cfg.RootFS.DiffIDs[i])
			if err != nil {
				return err
			}
			f, err := os.Open(blob)
			if err != nil {
				return err
			}
			err = u.apply(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, cfg.RootFS.DiffIDs[i], err)
			}
		}
		return nil
	})
	if err != nil {
		return fail("unpack", err)
	}
	return out, nil
}

// rootfsKey names the root filesystem of a stack of layers.
func rootfsKey(diffIDs []v1.Hash) string {
	h := sha256.New()
	for _, d := range diffIDs {
		io.WriteString(h, d.String()+"\n")
	}
	return hex.EncodeToString(h.Sum(nil))
}

// blob returns the path of layer l, uncompressed, in the store, fetching
// it if needed and checking it against its diff ID.
func (s *Store) blob(ctx context.Context, l v1.Layer, diffID v1.Hash) (string, error) {
	if diffID.Algorithm != "sha256" || len(diffID.Hex) != 64 {
		return "", fmt.Errorf("diff ID %q: %w", diffID, errdefs.ErrDataLoss)
	}
	final := filepath.Join(s.dir, "blobs", "sha256", diffID.Hex)
	err := s.once(ctx, "blob-"+diffID.Hex, final, func(tmp string) error {
		digest, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		defer rc.Close()
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		// The compressed stream is hashed as it is read, so that a failure
		// to decompress can be told apart from content that is not what
		// its digest says.
		blobHash := sha256.New()
		compressed := io.TeeReader(ctxReader{ctx, rc}, blobHash)
		diffHash := sha256.New()
		err = decompress(compressed, io.MultiWriter(f, diffHash))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			_, derr := io.Copy(io.Discard, compressed)
			switch {
			case derr != nil: // the source's own error: a dropped connection, a failed check
				return fmt.Errorf("%v; then: %w", err, derr)
			case digest.Algorithm == "sha256" && hex.EncodeToString(blobHash.Sum(nil)) != digest.Hex:
				return fmt.Errorf("blob %s does not match its digest (%v): %w", digest, err, errdefs.ErrDataLoss)
			}
			return fmt.Errorf("blob %s: %v: %w", digest, err, errdefs.ErrDataLoss)
		}
		// Read to the end, so that the source checks the digest too.
		if _, err := io.Copy(io.Discard, compressed); err != nil {
			return err
		}
		if digest.Algorithm == "sha256" && hex.EncodeToString(blobHash.Sum(nil)) != digest.Hex {
			return fmt.Errorf("blob is sha256:%x, its digest says %s: %w", blobHash.Sum(nil), digest, errdefs.ErrDataLoss)
		}
		if got := hex.EncodeToString(diffHash.Sum(nil)); got != diffID.Hex {
			return fmt.Errorf("layer content is sha256:%s, its diff ID says %s: %w", got, diffID, errdefs.ErrDataLoss)
		}
		return nil
	})
	return final, err
}

// decompress copies r to w, gunzipping or un-zstd-ing it when it starts
// with the magic of either; a plain tar passes as is.
func decompress(r io.Reader, w io.Writer) error {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		_, err = io.Copy(w, zr)
		return err
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		_, err = io.Copy(w, zr)
		return err
	}
	_, err := io.Copy(w, br)
	return err
}

// ctxReader ends a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// once makes the entry at final with make, unless it exists: make fills
// tmp, a fresh name in the store's tmp directory, which is renamed to
// final only when make succeeds and removed otherwise. A file lock per key
// makes concurrent processes wait for one maker instead of racing.
func (s *Store) once(ctx context.Context, key, final string, make func(tmp string) error) error {
	if _, err := os.Lstat(final); err == nil {
		return nil
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Lstat(final); err == nil {
		return nil // made while we waited
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(s.dir, "tmp", key+"-"+hex.EncodeToString(rnd[:]))
	if err := make(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return nil
}

// lock takes the store's file lock for key, waiting while ctx lasts.
func (s *Store) lock(ctx context.Context, key string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "locks", key+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", key, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kindOf gives err the errdefs kind that fits it, unless it has one.
func kindOf(err error, remote bool) error {
	if err == nil {
		return nil
	}
	for _, k := range []error{errdefs.ErrNotFound, errdefs.ErrInvalidArgument, errdefs.ErrDataLoss,
		errdefs.ErrUnavailable, errdefs.ErrPermissionDenied, errdefs.ErrUnauthenticated, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, k) {
			return err
		}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		case te.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("%w: %w", err, errdefs.ErrUnauthenticated)
		case te.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %w", err, errdefs.ErrPermissionDenied)
		case te.StatusCode >= 500:
			return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
		}
		for _, d := range te.Errors {
			if strings.HasSuffix(string(d.Code), "_UNKNOWN") {
				return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
			}
		}
	}
	if !remote {
		// A local file that can not be read to the end, or whose content
		// does not add up, is damaged.
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("%w: %w", err, errdefs.ErrDataLoss)
	}
	// Only errors of the network count as the registry's: a bare errno
	// satisfies net.Error too, and the store's own failures (a full disk,
	// a broken directory) are not the registry's being unavailable.
	var oe *net.OpError
	var ue *url.Error
	switch {
	case strings.Contains(err.Error(), "error verifying"):
		return fmt.Errorf("%w: %w", err, errdefs.ErrDataLoss)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.As(err, &oe), errors.As(err, &ue):
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}
