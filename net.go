package runckit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// DialContext connects to address on the named network from inside the
// container's network namespace, as net.Dialer.DialContext does on the
// host: "127.0.0.1:8080" is the container's own loopback, with no port
// mapped to the host, so parallel containers never clash. Networks are
// "tcp", "tcp4", "tcp6", "udp", "udp4" and "udp6". A host name is
// resolved by the host's resolver ("localhost" is the container's
// loopback too); an empty host means localhost. Its signature fits
// http.Transport.DialContext:
//
//	client := &http.Client{Transport: &http.Transport{DialContext: c.DialContext}}
//
// The socket is made in the namespace of init, on a thread that enters it
// only for that system call, and is connected from the program's own
// threads: a socket keeps the namespace it was made in. A container that
// shares the host's network namespace is dialled as the host would. The
// container must be created, running or paused: once init has exited the
// namespace is gone (ErrFailedPrecondition), and after Delete, ErrNotFound.
func (c *Container) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	domains, sotype, err := dialNetwork(network)
	if err != nil {
		return nil, fmt.Errorf("runckit: dial %s %s in container %q: %w", network, address, c.id, err)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("runckit: dial %s %q in container %q: %v: %w", network, address, c.id, err, errdefs.ErrInvalidArgument)
	}
	port, err := net.DefaultResolver.LookupPort(ctx, network, portStr)
	if err != nil {
		return nil, fmt.Errorf("runckit: dial %s %q in container %q: %v: %w", network, address, c.id, err, errdefs.ErrInvalidArgument)
	}
	nsfd, hostNS, err := c.openNetns()
	if err != nil {
		return nil, err
	}
	defer unix.Close(nsfd)
	if hostNS {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	ips, err := dialAddrs(ctx, host, domains)
	if err != nil {
		return nil, fmt.Errorf("runckit: dial %s %s in container %q: %w", network, address, c.id, err)
	}
	var firstErr error
	for _, ip := range ips {
		conn, err := dialIn(ctx, nsfd, network, sotype, ip, port)
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("runckit: dial %s %s in container %q: %w", network, address, c.id, firstErr)
}

// dialNetwork maps a network name to the socket domains it may use and its
// socket type.
func dialNetwork(network string) (domains []int, sotype int, err error) {
	switch network {
	case "tcp":
		return []int{unix.AF_INET, unix.AF_INET6}, unix.SOCK_STREAM, nil
	case "tcp4":
		return []int{unix.AF_INET}, unix.SOCK_STREAM, nil
	case "tcp6":
		return []int{unix.AF_INET6}, unix.SOCK_STREAM, nil
	case "udp":
		return []int{unix.AF_INET, unix.AF_INET6}, unix.SOCK_DGRAM, nil
	case "udp4":
		return []int{unix.AF_INET}, unix.SOCK_DGRAM, nil
	case "udp6":
		return []int{unix.AF_INET6}, unix.SOCK_DGRAM, nil
	}
	return nil, 0, fmt.Errorf("network %q is not supported (tcp, tcp4, tcp6, udp, udp4, udp6): %w", network, errdefs.ErrInvalidArgument)
}

// dialAddrs resolves host to the addresses to try, in order, keeping those
// of the allowed domains. An empty host and "localhost" are the loopback
// addresses, which are the container's own once the socket is made there.
func dialAddrs(ctx context.Context, host string, domains []int) ([]net.IP, error) {
	var ips []net.IP
	switch {
	case host == "" || host == "localhost":
		ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	case net.ParseIP(host) != nil:
		ips = []net.IP{net.ParseIP(host)}
	default:
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %q: %v: %w", host, err, errdefs.ErrNotFound)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	var out []net.IP
	for _, ip := range ips {
		d := unix.AF_INET6
		if ip.To4() != nil {
			d = unix.AF_INET
		}
		for _, want := range domains {
			if d == want {
				out = append(out, ip)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address of %q fits the network: %w", host, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// openNetns opens init's network namespace and reports whether it is the
// program's own. The pid is checked through init's pidfd after the open:
// while init has not exited its pid can not name another process, so the
// namespace opened is init's.
func (c *Container) openNetns() (fd int, host bool, err error) {
	c.mu.Lock()
	st := c.containerStateLocked()
	switch st {
	case ctrDeleted:
		c.mu.Unlock()
		return -1, false, errDeleted(c.id)
	case ctrExiting, ctrStopped, ctrDeleting:
		c.mu.Unlock()
		return -1, false, fmt.Errorf("runckit: dial in container %q: container is %s; its network namespace is gone with init: %w",
			c.id, st, errdefs.ErrFailedPrecondition)
	}
	pid := c.init.pid
	pidfd := -1
	if h := c.init.pidfd; h.open() {
		// Duplicated under the lock, so the exit handler can not close it,
		// and its number be reused, while we look.
		var err error
		if pidfd, err = unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			c.mu.Unlock()
			return -1, false, fmt.Errorf("runckit: dial in container %q: dup init's pidfd: %w", c.id, err)
		}
	}
	c.mu.Unlock()
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	gone := func(why string) error {
		return fmt.Errorf("runckit: dial in container %q: init (pid %d) %s: %w", c.id, pid, why, errdefs.ErrFailedPrecondition)
	}
	if pid <= 0 {
		return -1, false, gone("has no pid")
	}
	fd, err = unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, gone(fmt.Sprintf("has no network namespace to open: %v", err))
	}
	if pidfd >= 0 {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 0); n > 0 {
			unix.Close(fd)
			return -1, false, gone("has exited")
		}
	}
	var ns, self unix.Stat_t
	if err := unix.Fstat(fd, &ns); err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("runckit: dial in container %q: stat network namespace: %w", c.id, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("runckit: dial in container %q: stat own network namespace: %w", c.id, err)
	}
	return fd, ns.Dev == self.Dev && ns.Ino == self.Ino, nil
}

// socketIn makes a non-blocking socket in the network namespace nsfd. The
// thread enters the namespace for the socket call alone, then returns to
// its own; if it can not return, it stays locked to its goroutine, which
// then ends, and the runtime ends the thread with it, so that no other
// goroutine ever runs in the container's namespace.
func socketIn(nsfd, domain, sotype int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("enter the container's network namespace: %w", os.NewSyscallError("setns", err))}
			return
		}
		fd, serr := unix.Socket(domain, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if serr != nil {
			serr = os.NewSyscallError("socket", serr)
		}
		if err := unix.Setns(own, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, serr}
	}()
	r := <-ch
	return r.fd, r.err
}

// aLongTimeAgo is a deadline in the past, to wake a blocked connect.
var aLongTimeAgo = time.Unix(1, 0)

// dialIn connects a socket made in nsfd's namespace to ip:port, bounded by
// ctx, and returns it as a net.Conn.
func dialIn(ctx context.Context, nsfd int, network string, sotype int, ip net.IP, port int) (net.Conn, error) {
	var sa unix.Sockaddr
	domain := unix.AF_INET
	if ip4 := ip.To4(); ip4 != nil {
		sa4 := &unix.SockaddrInet4{Port: port}
		copy(sa4.Addr[:], ip4)
		sa = sa4
	} else {
		domain = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: port}
		copy(sa6.Addr[:], ip.To16())
		sa = sa6
	}
	opErr := func(err error) error {
		var addr net.Addr = &net.TCPAddr{IP: ip, Port: port}
		if sotype == unix.SOCK_DGRAM {
			addr = &net.UDPAddr{IP: ip, Port: port}
		}
		return &net.OpError{Op: "dial", Net: network, Addr: addr, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	fd, err := socketIn(nsfd, domain, sotype)
	if err != nil {
		return nil, opErr(err)
	}
	// A non-blocking fd makes a File that waits in the runtime's poller.
	f := os.NewFile(uintptr(fd), "runckit-netns-socket")
	defer f.Close() // net.FileConn keeps a duplicate
	cerr := unix.Connect(fd, sa)
	if errors.Is(cerr, unix.EINPROGRESS) {
		cerr = waitConnected(ctx, f)
	}
	if cerr != nil {
		if ctx.Err() != nil {
			cerr = ctx.Err()
		} else if errors.Is(cerr, os.ErrDeadlineExceeded) {
			cerr = context.DeadlineExceeded
		} else if errno, ok := cerr.(syscall.Errno); ok {
			cerr = os.NewSyscallError("connect", errno)
		}
		return nil, opErr(cerr)
	}
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, opErr(err)
	}
	return conn, nil
}

// waitConnected waits for a non-blocking connect on f to finish: SO_ERROR
// says how it went, and a socket with no error and no peer is still
// connecting.
func waitConnected(ctx context.Context, f *os.File) error {
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(aLongTimeAgo) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var connErr error
	// The connect may have finished already (on loopback it often has,
	// with no readiness event still to come), so look before every wait.
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = err
			return true
		}
		switch e := syscall.Errno(v); e {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false
			}
			return true
		default:
			connErr = e
			return true
		}
	})
	if werr != nil {
		return werr
	}
	f.SetWriteDeadline(time.Time{})
	return connErr
}
