package runckit_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// dialRetry dials until something listens or ctx ends.
func dialRetry(ctx context.Context, t *testing.T, c *runckit.Container, network, addr string) net.Conn {
	t.Helper()
	for {
		conn, err := c.DialContext(ctx, network, addr)
		if err == nil {
			return conn
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || ctx.Err() != nil {
			t.Fatalf("DialContext(%s, %s): %v", network, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNetDialInsideNetns: a TCP server on the container's loopback is
// reached through DialContext, and the same port on the host's loopback is
// a different place.
func TestNetDialInsideNetns(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	// A host listener on some port: inside the container that port is
	// closed, which shows the socket is not made in the host namespace.
	hostL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	hostPort := hostL.Addr().(*net.TCPAddr).Port

	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "echo from-container | nc -l -p 8080"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn := dialRetry(ctx, t, c, "tcp", "127.0.0.1:8080")
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || line != "from-container\n" {
		t.Errorf("read %q, %v; want %q", line, err, "from-container\n")
	}
	if _, err := c.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", hostPort)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the host's port inside the container: %v, want ECONNREFUSED", err)
	}
	// The host's own connections still go to the host: no thread of the
	// program was left in the container's namespace.
	for i := 0; i < 20; i++ {
		hc, err := net.Dial("tcp", hostL.Addr().String())
		if err != nil {
			t.Fatalf("host dial after DialContext: %v", err)
		}
		hc.Close()
	}
}

// TestNetHTTPClient: an http.Client whose transport dials with
// DialContext GETs from busybox httpd inside the container.
func TestNetHTTPClient(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	spec := runckittest.Spec(t, "sh", "-c", "mkdir -p /tmp/www && echo hello-http > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	dialRetry(ctx, t, c, "tcp", "localhost:8080").Close()
	tr := &http.Transport{DialContext: c.DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := 0; i < 5; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://localhost:8080/index.html", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(body) != "hello-http\n" {
			t.Fatalf("GET: %d %q %v", resp.StatusCode, body, err)
		}
	}
}

// TestNetUDP: a datagram socket is made in the container too. Busybox has
// no UDP server, so the proof is negative and exact: a host socket bound to
// the port gets nothing, and the container's loopback answers with port
// unreachable, which the connected socket reads as ECONNREFUSED.
func TestNetUDP(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hostU, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostU.Close()
	conn, err := c.DialContext(ctx, "udp4", hostU.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, ok := conn.(*net.UDPConn); !ok {
		t.Errorf("conn is %T, want *net.UDPConn", conn)
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("read after a datagram to a closed port in the container: %v, want ECONNREFUSED", err)
	}
	hostU.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := hostU.ReadFrom(make([]byte, 16)); err == nil {
		t.Errorf("the host's socket got %d bytes: the datagram left from the host's namespace", n)
	}
}

// TestNetHostNamespace: a container without a network namespace of its
// own is dialled as the host would: the host's listener answers.
func TestNetHostNamespace(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("host\n"))
			c.Close()
		}
	}()
	spec := runckittest.Spec(t, "sleep", "100000")
	var ns []specs.LinuxNamespace
	for _, n := range spec.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace {
			ns = append(ns, n)
		}
	}
	spec.Linux.Namespaces = ns
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if line != "host\n" {
		t.Errorf("read %q from the host listener, want %q", line, "host\n")
	}
}

// TestNetDialErrors: bad networks and addresses, an exited init, a
// deleted container and a cancelled context each fail with their kind.
func TestNetDialErrors(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ network, addr string }{
		{"unix", "/tmp/sock"}, {"ip4:icmp", "127.0.0.1"}, {"tcp", "127.0.0.1"}, {"tcp", "127.0.0.1:notaport"},
		{"tcp4", "[::1]:80"}, {"tcp6", "127.0.0.1:80"},
	} {
		if _, err := c.DialContext(ctx, tc.network, tc.addr); !errdefs.IsInvalidArgument(err) {
			t.Errorf("DialContext(%q, %q) = %v, want ErrInvalidArgument", tc.network, tc.addr, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.DialContext(cctx, "tcp", "127.0.0.1:80"); !errors.Is(err, context.Canceled) {
		t.Errorf("DialContext with a cancelled context = %v, want context.Canceled", err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DialContext(ctx, "tcp", "127.0.0.1:80"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("DialContext after init exited = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DialContext(ctx, "tcp", "127.0.0.1:80"); !errdefs.IsNotFound(err) {
		t.Errorf("DialContext after Delete = %v, want ErrNotFound", err)
	}
}

// TestNetDialDeadline: a connect that never completes ends with ctx. The
// container is paused with httpd listening, so nothing accepts: once the
// accept queue is full the kernel drops SYNs and connect stays in progress.
func TestNetDialDeadline(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "httpd", "-f", "-p", "8080", "-h", "/tmp"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	dialRetry(ctx, t, c, "tcp", "127.0.0.1:8080").Close()
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Resume(ctx)
	var conns []net.Conn
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("100 connections completed with nothing accepting them")
		}
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		start := time.Now()
		conn, err := c.DialContext(dctx, "tcp", "127.0.0.1:8080")
		cancel()
		if err == nil {
			conns = append(conns, conn)
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial %d: %v, want context.DeadlineExceeded", i, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("dial took %v past a 300ms deadline", d)
		}
		break
	}
	// A cancel, not a deadline, ends a pending connect too.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := c.DialContext(cctx, "tcp", "127.0.0.1:8080"); !errors.Is(err, context.Canceled) {
		t.Errorf("dial cancelled while connecting: %v, want context.Canceled", err)
	}
}
