// Command faultrunc stands in for runc in tests and injects faults into
// chosen runc subcommands.
//
// It reads its control directory from $FAULTRUNC_CONTROL and the real runc
// binary from $FAULTRUNC_REAL. When $FAULTRUNC_CONTROL/<subcommand>.json
// exists it holds a fault {"action": ..., "message": ..., "once": bool}:
//
//	fail          log message to the --log file (JSON) and stderr, exit 1
//	stall         create <sub>.stalled, wait for <sub>.release, then run runc
//	crash-before  SIGKILL itself before doing anything
//	crash-after   run runc as a child, then SIGKILL itself
//	stall-after   run runc as a child, then stall, then exit with its status
//
// A fault with "once" set is claimed by renaming its file away, so exactly
// one invocation gets it. Without a fault faultrunc execs the real runc in
// place, so the process tree is the same as with runc itself.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fault mirrors faultrunc.Fault on disk.
type fault struct {
	Action  string `json:"action"`
	Message string `json:"message"`
	Once    bool   `json:"once"`
}

// valueFlags are runc's global flags that take a value.
var valueFlags = map[string]bool{
	"root": true, "log": true, "log-format": true, "criu": true, "rootless": true,
}

// invocation is what faultrunc needs to know about its command line.
type invocation struct {
	sub         string // runc subcommand, "" if none (e.g. --version)
	log         string // the --log file runc would write to, "" if none
	preserveFDs int    // --preserve-fds of the subcommand
}

// parseArgs finds the subcommand and the log file in runc's arguments. Like
// runc, the last --log wins; a --log after the subcommand is honoured too.
func parseArgs(args []string) invocation {
	var inv invocation
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			if inv.sub == "" {
				inv.sub = a
			}
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesValue := name == "log" || name == "preserve-fds" ||
			(inv.sub == "" && valueFlags[name])
		if !takesValue {
			continue // a boolean flag, or one of the subcommand's own
		}
		if !hasValue && i+1 < len(args) {
			i++
			value = args[i]
		}
		switch name {
		case "log":
			inv.log = value
		case "preserve-fds":
			inv.preserveFDs, _ = strconv.Atoi(value)
		}
	}
	return inv
}

func main() {
	dir, real := os.Getenv("FAULTRUNC_CONTROL"), os.Getenv("FAULTRUNC_REAL")
	if real == "" {
		fmt.Fprintln(os.Stderr, "faultrunc: FAULTRUNC_REAL is not set")
		os.Exit(2)
	}
	inv := parseArgs(os.Args[1:])
	f, err := loadFault(dir, inv.sub)
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultrunc: %v\n", err)
		os.Exit(2)
	}
	if f == nil {
		passThrough(real)
	}
	switch f.Action {
	case "fail":
		fail(inv.log, f.Message)
	case "stall":
		stall(dir, inv.sub)
		passThrough(real)
	case "crash-before":
		crash()
	case "crash-after":
		runChild(real, inv)
		crash()
	case "stall-after":
		code := runChild(real, inv)
		stall(dir, inv.sub)
		os.Exit(code)
	default:
		fmt.Fprintf(os.Stderr, "faultrunc: unknown action %q for %s\n", f.Action, inv.sub)
		os.Exit(2)
	}
}

// loadFault returns the fault for sub, or nil if there is none. A fault
// with Once set is claimed and removed.
func loadFault(dir, sub string) (*fault, error) {
	if dir == "" || sub == "" {
		return nil, nil
	}
	path := filepath.Join(dir, sub+".json")
	f, err := readFault(path)
	if f == nil || !f.Once {
		return f, err
	}
	// Claim the file: of concurrent invocations only one rename succeeds.
	// Read the claimed copy again, in case the fault was replaced meanwhile.
	claimed := fmt.Sprintf("%s.claimed.%d", path, os.Getpid())
	if err := os.Rename(path, claimed); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer os.Remove(claimed)
	return readFault(claimed)
}

// readFault reads a fault file; it returns nil, nil if there is none.
func readFault(path string) (*fault, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var f fault
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &f, nil
}

// passThrough replaces this process with the real runc.
func passThrough(real string) {
	argv := append([]string{real}, os.Args[1:]...)
	err := syscall.Exec(real, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "faultrunc: exec %s: %v\n", real, err)
	os.Exit(2)
}

// fail reports msg the way runc reports an error and exits 1.
func fail(logFile, msg string) {
	if logFile != "" {
		line, _ := json.Marshal(map[string]string{
			"level": "error",
			"msg":   msg,
			"time":  time.Now().Format(time.RFC3339Nano),
		})
		if f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			f.Write(append(line, '\n'))
			f.Close()
		}
	}
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// stall announces itself with a marker file holding its pid and polls until
// the release file exists. Signals such as SIGTERM keep their default
// action, so a cancelled caller simply kills it.
func stall(dir, sub string) {
	pid := strconv.Itoa(os.Getpid())
	base := filepath.Join(dir, sub+".stalled")
	// Write the pid to a temporary file and link it into place, so the
	// marker never appears empty; os.Link fails if the name is taken.
	tmp := base + ".tmp." + pid
	if err := os.WriteFile(tmp, []byte(pid+"\n"), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "faultrunc: %v\n", err)
		os.Exit(2)
	}
	if os.Link(tmp, base) != nil {
		os.Rename(tmp, base+"."+pid)
	}
	os.Remove(tmp)
	release := filepath.Join(dir, sub+".release")
	for {
		if _, err := os.Stat(release); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runChild runs the real runc with this process's arguments, stdio,
// preserved fds and environment, and returns its exit status.
func runChild(real string, inv invocation) int {
	cmd := exec.Command(real, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	for fd := 3; fd < 3+inv.preserveFDs; fd++ {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(fd), ""))
	}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if code := exit.ExitCode(); code >= 0 {
			return code
		}
		return 128 + int(exit.Sys().(syscall.WaitStatus).Signal())
	default:
		fmt.Fprintf(os.Stderr, "faultrunc: %v\n", err)
		return 2
	}
}

// crash kills this process with SIGKILL.
func crash() {
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
