package epoll

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestLoopCallsHandlerAndStopsWhenEmpty(t *testing.T) {
	defer goleak.VerifyNone(t)
	var l Loop
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var mu sync.Mutex
	got := make(chan uint64, 10)
	if err := l.Add(fd, func() {
		mu.Lock()
		defer mu.Unlock()
		var buf [8]byte
		if n, _ := unix.Read(fd, buf[:]); n == 8 {
			got <- uint64(buf[0])
		}
	}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		unix.Write(fd, []byte{byte(i), 0, 0, 0, 0, 0, 0, 0})
		select {
		case v := <-got:
			if v != uint64(i) {
				t.Errorf("handler read %d, want %d", v, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("handler not called")
		}
	}
	l.Remove(fd)
	// goleak.VerifyNone retries until the loop goroutine has gone.
}

func TestLoopRestartsAfterGoingIdle(t *testing.T) {
	defer goleak.VerifyNone(t)
	var l Loop
	for round := 0; round < 50; round++ {
		fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		done := make(chan struct{})
		if err := l.Add(fd, func() {
			var buf [8]byte
			unix.Read(fd, buf[:])
			close(done)
		}); err != nil {
			t.Fatal(err)
		}
		unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: handler not called", round)
		}
		l.Remove(fd)
		unix.Close(fd)
	}
}
