package image_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/image"
	"github.com/runckit/runckit/runckittest"
)

// Environment of a child of TestImageCacheConcurrentProcesses.
const (
	childCacheEnv  = "RUNCKIT_IMAGE_TEST_CHILD_CACHE"
	childRefEnv    = "RUNCKIT_IMAGE_TEST_CHILD_REF"
	childResultEnv = "RUNCKIT_IMAGE_TEST_CHILD_RESULT"
	procs          = 4
)

// childResult is what a child writes to its result file.
type childResult struct {
	Rootfs string `json:"rootfs"`
	Ino    uint64 `json:"ino"`
	Err    string `json:"err,omitempty"`
}

// manyFiles is the upper layer of the image: enough small files that an
// unpack takes a while, so that processes started together overlap. A
// child checks its rootfs against the same list.
func manyFiles() []entry {
	var es []entry
	for d := 0; d < 20; d++ {
		es = append(es, dir(fmt.Sprintf("data/d%02d", d)))
		for f := 0; f < 100; f++ {
			es = append(es, file(fmt.Sprintf("data/d%02d/f%03d", d, f), strings.Repeat(fmt.Sprintf("%d/%d;", d, f), 1+f%7)))
		}
	}
	return es
}

// TestImageCacheConcurrentProcesses: separate `go test` processes (this
// binary, re-executed) pull and unpack one image into one shared store at
// the same instant. Each must get a complete root filesystem; the store
// must end with the image's blobs made once each, its root made once, and
// nothing half-made. Each attempt to make an entry is seen with inotify on
// the store's tmp/ (every entry is made there first), so a second unpack
// of a digest is counted even when its rename loses.
func TestImageCacheConcurrentProcesses(t *testing.T) {
	if os.Getenv(childCacheEnv) != "" {
		concurrentChild(t)
		return
	}
	img := buildImage(t, v1.Config{Cmd: []string{"/bin/true"}}, busyboxLayer(t), layer(t, append([]entry{dir("data")}, manyFiles()...)...))
	host := serve(t, img, "multi/img", nil)
	ref := host + "/multi/img:latest"

	cache := t.TempDir()
	s, err := image.Open(cache) // makes tmp/ for the watch
	if err != nil {
		t.Fatal(err)
	}
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, filepath.Join(s.Dir(), "tmp"), unix.IN_CREATE); err != nil {
		t.Fatal(err)
	}

	resDir := t.TempDir()
	type child struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		out    string
		copied chan struct{} // closed when the child's output is read to its end
	}
	var kids []*child
	defer func() {
		for _, k := range kids {
			if k.cmd.ProcessState == nil {
				k.cmd.Process.Kill()
				<-k.copied
				k.cmd.Wait()
			}
		}
	}()
	for i := 0; i < procs; i++ {
		k := &child{out: filepath.Join(resDir, fmt.Sprint(i)), copied: make(chan struct{})}
		k.cmd = exec.Command(os.Args[0], "-test.run=^TestImageCacheConcurrentProcesses$", "-test.count=1")
		k.cmd.Env = append(os.Environ(), childCacheEnv+"="+cache, childRefEnv+"="+ref, childResultEnv+"="+k.out)
		k.stdin, err = k.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := k.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		k.cmd.Stderr = os.Stderr
		if err := k.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kids = append(kids, k)
		// The child's output, for a failure report.
		go func(i int, r io.Reader) {
			defer close(k.copied)
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if line := sc.Text(); line != "PASS" {
					t.Logf("child %d: %s", i, line)
				}
			}
		}(i, stdout)
	}
	// All children at the barrier, then all released at once.
	deadline := time.Now().Add(time.Minute)
	for i := 0; i < procs; i++ {
		for {
			if _, err := os.Stat(filepath.Join(resDir, fmt.Sprint(i)) + ".ready"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("child %d never got ready", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, k := range kids {
		k.stdin.Close()
	}
	var first childResult
	for i, k := range kids {
		<-k.copied
		if err := k.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v", i, err)
		}
		data, err := os.ReadFile(k.out)
		if err != nil {
			t.Errorf("child %d wrote no result: %v", i, err)
			continue
		}
		var r childResult
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Err != "":
			t.Errorf("child %d: %s", i, r.Err)
		case first.Rootfs == "":
			first = r
		case r.Rootfs != first.Rootfs || r.Ino != first.Ino:
			t.Errorf("child %d got root %s (inode %d), another got %s (inode %d)", i, r.Rootfs, r.Ino, first.Rootfs, first.Ino)
		}
	}

	// Every attempt to make an entry, by any process, created it in tmp/.
	made := map[string]int{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(in, buf)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				t.Fatal("inotify queue overflowed")
			}
			nameb := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			name := strings.TrimRight(string(nameb), "\x00")
			// tmp/KEY-RANDOM: KEY is "blob-HEX" or "rootfs-HEX".
			made[name[:strings.LastIndexByte(name, '-')]]++
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	var blobs, roots int
	for key, n := range made {
		if n != 1 {
			t.Errorf("%s made %d times, want once", key, n)
		}
		switch {
		case strings.HasPrefix(key, "blob-"):
			blobs++
		case strings.HasPrefix(key, "rootfs-"):
			roots++
		}
	}
	if blobs != 2 || roots != 1 {
		t.Errorf("made %d blobs and %d roots, want 2 and 1 (%v)", blobs, roots, made)
	}
	// What is left: the two blobs, the one root, nothing in tmp/.
	for sub, want := range map[string]int{"blobs/sha256": 2, "rootfs": 1, "tmp": 0} {
		entries, err := os.ReadDir(filepath.Join(cache, sub))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != want {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s holds %v, want %d entries", sub, names, want)
		}
	}
}

// concurrentChild is one process of TestImageCacheConcurrentProcesses: it
// waits for its parent to close stdin, pulls the image into the shared
// store and checks the root it gets, at once, while the others may still
// be at work.
func concurrentChild(t *testing.T) {
	out := os.Getenv(childResultEnv)
	res := childResult{}
	defer func() {
		data, _ := json.Marshal(res)
		if err := os.WriteFile(out, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}()
	fail := func(format string, args ...any) {
		if res.Err == "" {
			res.Err = fmt.Sprintf(format, args...)
		}
	}
	s, err := image.Open(os.Getenv(childCacheEnv))
	if err != nil {
		fail("open: %v", err)
		return
	}
	if err := os.WriteFile(out+".ready", nil, 0o600); err != nil {
		fail("%v", err)
		return
	}
	io.Copy(io.Discard, os.Stdin) // the start: the parent closes stdin
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img, err := s.Pull(ctx, os.Getenv(childRefEnv))
	if err != nil {
		fail("pull: %v", err)
		return
	}
	res.Rootfs = img.Rootfs
	var st unix.Stat_t
	if err := unix.Lstat(img.Rootfs, &st); err != nil {
		fail("%v", err)
		return
	}
	res.Ino = st.Ino
	// The root is complete: busybox as on the host, every file of the
	// upper layer with its content.
	want, err := os.ReadFile(runckittest.BusyboxPath)
	if err != nil {
		fail("%v", err)
		return
	}
	got, err := os.ReadFile(filepath.Join(img.Rootfs, "bin/busybox"))
	if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
		fail("bin/busybox: %d bytes, %v; want %d bytes of the host's", len(got), err, len(want))
	}
	if l, err := os.Readlink(filepath.Join(img.Rootfs, "bin/sh")); err != nil || l != "busybox" {
		fail("bin/sh: %q %v", l, err)
	}
	for _, e := range manyFiles() {
		p := filepath.Join(img.Rootfs, e.name)
		if e.typ != file("", "").typ {
			if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
				fail("%s: %v, want a directory", e.name, err)
			}
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil || string(data) != e.data {
			sum := sha256.Sum256(data)
			fail("%s: %v, content %s; want %q", e.name, err, hex.EncodeToString(sum[:4]), e.data)
		}
	}
}
