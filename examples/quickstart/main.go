// Quickstart creates a busybox container, runs three concurrent execs in it,
// prints the ordered event stream and the exit codes, and deletes it.
//
// Run it as root with `make demo`, which installs runc and busybox-static
// first when they are missing.
package main

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	if err := runckittest.Check(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "runckit-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	defer runckittest.Cleanup()

	// A bundle: config.json plus a busybox rootfs (runckittest builds one
	// from busybox-static; any OCI bundle works).
	rootfs, err := runckittest.SharedRootfs()
	if err != nil {
		return err
	}
	bundle := filepath.Join(work, "bundle")
	if err := runckittest.WriteBundle(bundle, runckittest.NewSpec(rootfs, "sleep", "100000")); err != nil {
		return err
	}

	// Events arrive in order, on one goroutine, however fast things happen.
	sink := runckit.EventSinkFunc(func(e runckit.Event) { fmt.Println("event:", e) })

	c, err := runckit.NewContainer(ctx, "quickstart", bundle,
		runckit.WithEventSink(sink),
		runckit.WithRuntimeRoot(filepath.Join(work, "runc")))
	if err != nil {
		return err
	}
	defer c.Delete(context.Background(), runckit.DeleteForce())
	if err := c.Start(ctx); err != nil {
		return err
	}

	commands := map[string][]string{
		"hello":  {"echo", "hello from an exec"},
		"uname":  {"uname", "-n"},
		"failer": {"sh", "-c", "echo failing >&2; exit 3"},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[string]string{}
	for id, args := range commands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			p, err := c.Exec(ctx, id, runckittest.ProcessSpec(args...), runckit.Stdio{Stdout: &out, Stderr: &out})
			if err == nil {
				err = p.Start(ctx)
			}
			var st runckit.ExitStatus
			if err == nil {
				st, err = p.Wait(ctx) // returns once the output is copied
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				results[id] = "error: " + err.Error()
				return
			}
			results[id] = fmt.Sprintf("%v, output %q", st, out.String())
		}()
	}
	wg.Wait()

	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		return err
	}
	st, err := c.Wait(ctx)
	if err != nil {
		return err
	}
	if err := c.Delete(ctx); err != nil { // flushes the event stream
		return err
	}
	for _, id := range []string{"hello", "uname", "failer"} {
		fmt.Printf("exec %-6s: %s\n", id, results[id])
	}
	fmt.Printf("init       : %v\n", st)
	return nil
}
