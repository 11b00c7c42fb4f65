// Command containerd-shim-runckit-v1 is a containerd shim (runtime type
// io.containerd.runckit.v1) whose task service is runckit.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"

	runckitshim "github.com/runckit/runckit/shim"
)

func main() {
	// runckit's ReapingExitWatcher reaps and makes the shim a subreaper;
	// pkg/shim's own wait(-1) reaper would steal exits from it.
	shim.RunShim(context.Background(), runckitshim.NewManager(runckitshim.RuntimeName), func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
