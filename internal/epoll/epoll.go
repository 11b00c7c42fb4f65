// Package epoll is a tiny shared epoll loop: many fds, one goroutine, and
// that goroutine exists only while at least one fd is registered.
package epoll

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Loop calls a handler, on its goroutine, each time a registered fd is
// readable. The zero Loop is ready to use.
//
// Handlers run one at a time. A handler must consume what made its fd
// readable (the loop is level-triggered). Remove does not wait for a
// handler already running, so the owner of an fd must make closing it and
// its handler exclusive (a mutex and a closed flag in the handler).
type Loop struct {
	mu       sync.Mutex // guards the fields below
	epfd     int        // valid while running
	wakefd   int        // eventfd that wakes the loop to notice it is empty
	running  bool
	handlers map[int32]func()
}

// Add registers fd. The fd must stay open until Remove has returned.
func (l *Loop) Add(fd int, onReadable func()) error {
	return l.AddEvents(fd, unix.EPOLLIN, onReadable)
}

// AddEvents is Add waiting for events instead of readability: EPOLLPRI for
// a cgroup or kernfs file, which is always readable and reports a change
// as EPOLLPRI.
func (l *Loop) AddEvents(fd int, events uint32, onReady func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running {
		if err := l.startLocked(); err != nil {
			return err
		}
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.wakeIfEmptyLocked()
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	l.handlers[int32(fd)] = onReady
	return nil
}

// Remove unregisters fd; its handler is not called again once Remove has
// returned, unless it was already running.
func (l *Loop) Remove(fd int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.handlers[int32(fd)]; !ok {
		return
	}
	delete(l.handlers, int32(fd))
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	l.wakeIfEmptyLocked()
}

func (l *Loop) startLocked() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return fmt.Errorf("epoll_ctl add eventfd: %w", err)
	}
	l.epfd, l.wakefd, l.running = epfd, wakefd, true
	if l.handlers == nil {
		l.handlers = make(map[int32]func())
	}
	go l.run(epfd, wakefd)
	return nil
}

func (l *Loop) wakeIfEmptyLocked() {
	if len(l.handlers) == 0 {
		unix.Write(l.wakefd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

func (l *Loop) run(epfd, wakefd int) {
	events := make([]unix.EpollEvent, 32)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			panic(fmt.Sprintf("epoll_wait: %v", err))
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(wakefd) {
				var buf [8]byte
				unix.Read(wakefd, buf[:])
				continue
			}
			l.mu.Lock()
			h := l.handlers[ev.Fd]
			l.mu.Unlock()
			if h != nil {
				h()
			}
		}
		l.mu.Lock()
		if len(l.handlers) == 0 {
			// Empty: close down. A later Add starts a new loop.
			l.running = false
			unix.Close(epfd)
			unix.Close(wakefd)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
}
