package runckit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// exampleBundle writes an OCI bundle that runs args in runckittest's
// busybox rootfs (hostname "runckittest", HOME=/root, cwd /) and returns it
// with a private runc state directory, so that an example touches nothing
// else on the machine. Any OCI bundle works the same way.
func exampleBundle(args ...string) (bundle, runtimeRoot string) {
	rootfs, err := runckittest.SharedRootfs()
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "runckit-example-")
	if err != nil {
		log.Fatal(err)
	}
	spec := runckittest.NewSpec(rootfs, args...)
	// A cgroup of its own rather than runc's default /<container-id>,
	// which every program on the machine shares.
	spec.Linux.CgroupsPath = "/" + filepath.Base(dir)
	bundle = filepath.Join(dir, "bundle")
	if err := runckittest.WriteBundle(bundle, spec); err != nil {
		log.Fatal(err)
	}
	return bundle, filepath.Join(dir, "runc")
}

// Create a container, start it, wait for its init to exit, delete it.
func Example() {
	ctx := context.Background()
	bundle, root := exampleBundle("sh", "-c", "echo hello from init; exit 3")

	var out bytes.Buffer
	c, err := runckit.NewContainer(ctx, "example", bundle,
		runckit.WithRuntimeRoot(root),
		runckit.WithStdio(runckit.Stdio{Stdout: &out}))
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	st, err := c.Wait(ctx) // returns once the output is copied
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Print(out.String())
	fmt.Println(st)
	// Output:
	// hello from init
	// exit code 3
}

// Run a process in a running container and collect its output.
func ExampleContainer_Exec() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-exec", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Delete(ctx, runckit.DeleteForce())
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}

	// The container's own env, user and cwd, with other args.
	spec, err := c.ProcessSpec("sh", "-c", "hostname; echo $HOME")
	if err != nil {
		log.Fatal(err)
	}
	var out bytes.Buffer
	p, err := c.Exec(ctx, "probe", spec, runckit.Stdio{Stdout: &out})
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		log.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Delete(ctx); err != nil { // frees the ID "probe"
		log.Fatal(err)
	}
	fmt.Print(out.String())
	fmt.Println(st)
	// Output:
	// runckittest
	// /root
	// exit code 0
}

// Run a command the way os/exec does: one call, output back, exec cleaned
// up after.
func ExampleContainer_Command() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-command", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Delete(ctx, runckit.DeleteForce())
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}

	out, err := c.Command("hostname").Output(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", out)

	// Spec starts as the container's process: adjust it before running.
	cmd := c.Command("sh", "-c", "echo hello $NAME from $(pwd)")
	cmd.Spec.Env = append(cmd.Spec.Env, "NAME=world")
	cmd.Spec.Cwd = "/tmp"
	out, err = cmd.Output(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", out)
	// Output:
	// runckittest
	// hello world from /tmp
}

// Standard output and standard error together, in the order written.
func ExampleCmd_CombinedOutput() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-combined", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Delete(ctx, runckit.DeleteForce())
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}

	out, err := c.Command("sh", "-c", "echo one; echo two >&2; echo three").CombinedOutput(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", out)
	// Output:
	// one
	// two
	// three
}

// A command that fails returns an *ExitError with its status and, from
// Output, its standard error.
func ExampleExitError() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-exiterror", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Delete(ctx, runckit.DeleteForce())
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}

	_, err = c.Command("ls", "/missing").Output(ctx)
	var exit *runckit.ExitError
	if errors.As(err, &exit) {
		fmt.Println("code:", exit.Code)
		fmt.Printf("stderr: %s", exit.Stderr)
	}
	// Output:
	// code: 1
	// stderr: ls: /missing: No such file or directory
}

// Every lifecycle step reaches the sink in order, one at a time: an exec's
// exit always comes before init's, and delete comes last.
func ExampleEventSinkFunc() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	sink := runckit.EventSinkFunc(func(e runckit.Event) {
		line := fmt.Sprintf("%d %s", e.Seq, e.Kind)
		if e.ExecID != "" {
			line += " " + e.ExecID
		}
		if e.Kind == runckit.EventExit {
			line += ": " + e.Status.String()
		}
		fmt.Println(line)
	})
	c, err := runckit.NewContainer(ctx, "example-events", bundle,
		runckit.WithRuntimeRoot(root), runckit.WithEventSink(sink))
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	spec, _ := c.ProcessSpec("true")
	p, err := c.Exec(ctx, "probe", spec, runckit.Stdio{})
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		log.Fatal(err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		log.Fatal(err)
	}
	// Delete returns once the sink has had the delete event.
	if err := c.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 1 create
	// 2 start
	// 3 exec-added probe
	// 4 exec-started probe
	// 5 exit probe: exit code 0
	// 6 exit: killed by SIGKILL
	// 7 delete
}

// Signal every process of the container at once.
func ExampleContainer_Kill() {
	ctx := context.Background()
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-kill", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	spec, _ := c.ProcessSpec("sleep", "100000")
	p, err := c.Exec(ctx, "sleeper", spec, runckit.Stdio{})
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		log.Fatal(err)
	}

	if err := c.Kill(ctx, syscall.SIGKILL, runckit.KillAll()); err != nil {
		log.Fatal(err)
	}
	execStatus, _ := p.Wait(ctx)
	initStatus, _ := c.Wait(ctx)
	if err := c.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("exec:", execStatus)
	fmt.Println("init:", initStatus)
	// Output:
	// exec: killed by SIGKILL
	// init: killed by SIGKILL
}

// Stop sends the stop signal (SIGTERM unless the spec's
// org.opencontainers.image.stopSignal annotation names another), waits
// for the grace period, then kills every process.
func ExampleContainer_Stop() {
	ctx := context.Background()
	// sleep, as its PID namespace's init, has no SIGTERM handler, so the
	// kernel drops SIGTERM and the grace period runs out.
	bundle, root := exampleBundle("sleep", "100000")
	c, err := runckit.NewContainer(ctx, "example-stop", bundle, runckit.WithRuntimeRoot(root))
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}

	st, err := c.Stop(ctx, 200*time.Millisecond)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(st)
	// Output:
	// killed by SIGKILL
}
