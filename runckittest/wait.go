package runckittest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
)

// DefaultWaitTimeout bounds a Strategy that was given no timeout of its own.
const DefaultWaitTimeout = 60 * time.Second

// Strategy is a condition that a started container reaches: a log line, a
// command that succeeds inside, a port that listens, an exit.
type Strategy interface {
	// WaitFor returns once the condition holds, or an error saying what
	// was waited for and what was seen last when it can no longer hold:
	// the deadline passed (wrapping context.DeadlineExceeded) or init
	// exited first (ErrFailedPrecondition).
	WaitFor(ctx context.Context, c *Container) error
}

// Wait is a Strategy with a deadline; make one with ForLog, ForCommand,
// ForPort or ForExit.
type Wait struct {
	what    string
	timeout time.Duration
	// check looks once: done, or why not yet (kept for the message).
	check func(ctx context.Context, c *Container) (bool, error)
	// exits is true for a condition that init's exit satisfies rather
	// than ends.
	exits bool
	// wake, if set, is a channel closed when a new look may succeed; nil
	// polls every poll.
	wake func(c *Container) <-chan struct{}
	poll time.Duration
}

// WithTimeout sets how long the condition is waited for.
func (w *Wait) WithTimeout(d time.Duration) *Wait {
	w.timeout = d
	return w
}

// String says what is waited for.
func (w *Wait) String() string { return w.what }

// WaitFor waits for the condition; see Strategy.
func (w *Wait) WaitFor(ctx context.Context, c *Container) error {
	timeout := w.timeout
	if timeout <= 0 {
		timeout = DefaultWaitTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	initDone := make(chan struct{})
	go func() {
		c.Init().Wait(ctx)
		close(initDone)
	}()
	defer func() { cancel(); <-initDone }()
	var last error
	for {
		var wake <-chan struct{}
		if w.wake != nil {
			wake = w.wake(c)
		}
		done, err := w.check(ctx, c)
		if done {
			return nil
		}
		if err != nil {
			last = err
			if errors.Is(err, errFinal) {
				return fmt.Errorf("wait for %s in container %s: %w", w.what, c.ID(), err)
			}
		}
		if !w.exits && c.Init().Status() == runckit.StatusStopped {
			return fmt.Errorf("wait for %s in container %s: init exited first (last: %v): %w", w.what, c.ID(), last, errdefs.ErrFailedPrecondition)
		}
		var tick <-chan time.Time
		if wake == nil {
			tick = time.After(w.poll)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s in container %s: %v (last: %v): %w", w.what, c.ID(), timeout, last, ctx.Err())
		case <-wake:
		case <-tick:
		case <-initDone:
			// Look once more: the exit may be the condition, or the last
			// log line may have come with it.
		}
	}
}

// ForLog waits for a line of init's output (stdout and stderr) that
// matches the regular expression pattern.
func ForLog(pattern string) *Wait {
	re, err := regexp.Compile(pattern)
	return &Wait{
		what: fmt.Sprintf("a log line matching %q", pattern),
		check: func(ctx context.Context, c *Container) (bool, error) {
			if err != nil {
				return false, fmt.Errorf("bad pattern: %v", err)
			}
			out := c.Output()
			for _, line := range strings.Split(out, "\n") {
				if re.MatchString(line) {
					return true, nil
				}
			}
			return false, nil
		},
		wake: func(c *Container) <-chan struct{} { _, ch := c.out.snapshot(); return ch },
	}
}

// ForCommand waits until args, run inside the container as its own
// process runs, exits with code 0. It is run again every poll interval.
func ForCommand(args ...string) *Wait {
	return &Wait{
		what: fmt.Sprintf("command %q to succeed", args),
		poll: 100 * time.Millisecond,
		check: func(ctx context.Context, c *Container) (bool, error) {
			out, err := c.Command(args...).CombinedOutput(ctx)
			if err != nil {
				return false, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
			}
			return true, nil
		},
	}
}

// ForPort waits until a TCP connection to port on the container's own
// loopback (127.0.0.1, or ::1) is accepted.
func ForPort(port int) *Wait {
	return &Wait{
		what: fmt.Sprintf("TCP port %d to listen", port),
		poll: 20 * time.Millisecond,
		check: func(ctx context.Context, c *Container) (bool, error) {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			conn, err := c.DialContext(dctx, "tcp", "localhost:"+strconv.Itoa(port))
			if err != nil {
				return false, err
			}
			conn.Close()
			return true, nil
		},
	}
}

// ForExit waits until init exits; with a code, it fails at once if init
// exits with another.
func ForExit(code ...int) *Wait {
	what := "init to exit"
	if len(code) > 0 {
		what = fmt.Sprintf("init to exit with code %d", code[0])
	}
	return &Wait{what: what, exits: true, poll: time.Hour,
		check: func(ctx context.Context, c *Container) (bool, error) {
			if c.Init().Status() != runckit.StatusStopped {
				return false, nil
			}
			st, err := c.Init().Wait(ctx)
			if err != nil {
				return false, err
			}
			if len(code) > 0 && st.Code != code[0] {
				return false, fmt.Errorf("init exited: %v: %w: %w", st, errFinal, errdefs.ErrFailedPrecondition)
			}
			return true, nil
		}}
}

// WaitFor waits for each strategy in turn and fails the test if one does
// not hold.
func (c *Container) WaitFor(ws ...Strategy) {
	c.tb.Helper()
	for _, w := range ws {
		if err := w.WaitFor(context.Background(), c); err != nil {
			c.tb.Fatalf("runckittest: %v\n%s", err, c.report())
		}
	}
}

// errFinal marks a check's error after which waiting longer can not help.
var errFinal = errors.New("condition can not hold")
