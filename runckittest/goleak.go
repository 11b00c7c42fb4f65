package runckittest

import "go.uber.org/goleak"

// IgnoreRunckitGoroutines returns the goleak options that ignore what
// runckit keeps for the life of the program once it has run a container:
// its orphan reaper, which is the program's SIGCHLD handler, and the
// os/signal goroutine that feeds it. Everything else runckit starts ends
// with the containers, and is still reported.
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, runckittest.IgnoreRunckitGoroutines()...)
//	}
func IgnoreRunckitGoroutines() []goleak.Option {
	return []goleak.Option{
		// Any frame, not just the top: a pass of the reaper may be under way.
		goleak.IgnoreAnyFunction("github.com/runckit/runckit.(*orphanReaper).loop"),
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"),
	}
}
