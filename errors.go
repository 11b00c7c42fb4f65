package runckit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// maxIDLength bounds container and exec IDs. 76 leaves room for runc's state
// paths and socket names under the default roots.
const maxIDLength = 76

// validateID checks that id is a non-empty run of letters and digits separated
// by single '.', '_' or '-' characters, at most maxIDLength long. IDs become
// directory and file names, so nothing else is accepted.
func validateID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("runckit: %s ID is empty: %w", kind, errdefs.ErrInvalidArgument)
	}
	if len(id) > maxIDLength {
		return fmt.Errorf("runckit: %s ID %.20q... is %d characters, longer than %d: %w",
			kind, id, len(id), maxIDLength, errdefs.ErrInvalidArgument)
	}
	prevSep := true // an ID may not start with a separator
	for i := 0; i < len(id); i++ {
		ch := id[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9':
			prevSep = false
		case ch == '.' || ch == '_' || ch == '-':
			if prevSep {
				return fmt.Errorf("runckit: %s ID %q: separator %q at offset %d must sit between letters or digits: %w",
					kind, id, ch, i, errdefs.ErrInvalidArgument)
			}
			prevSep = true
		default:
			return fmt.Errorf("runckit: %s ID %q: character %q at offset %d is not a letter, digit, '.', '_' or '-': %w",
				kind, id, ch, i, errdefs.ErrInvalidArgument)
		}
	}
	if prevSep {
		return fmt.Errorf("runckit: %s ID %q ends with a separator: %w", kind, id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ErrDrainTimeout is returned by Wait, together with the exit status, when
// the process exited but its output pipes were still held open (by a
// daemonised child, say) when the drain timeout expired. Output written after
// that is lost, as with exec.ErrWaitDelay.
var ErrDrainTimeout = fmt.Errorf("runckit: output not drained before the drain timeout: %w", context.DeadlineExceeded)

// runtimeError describes a failed runtime invocation: which step, for which
// container and process, what the runtime printed in its log, and the errdefs
// kind inferred from that message.
type runtimeError struct {
	Step        string // runc subcommand: create, start, exec, kill, delete...
	ContainerID string
	ExecID      string // "" for the init process or the container as a whole
	Message     string // the runtime's own words, from its log or stderr
	Err         error  // what go-runc returned
	kind        error  // errdefs kind
	// detail is what Error shows of Err: go-runc's text, or only the exit
	// status when Message was taken from that text, so as not to say it twice.
	detail string
}

func (e *runtimeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "runckit: runc %s", e.Step)
	fmt.Fprintf(&b, " container %q", e.ContainerID)
	if e.ExecID != "" {
		fmt.Fprintf(&b, " exec %q", e.ExecID)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.detail != "" {
		fmt.Fprintf(&b, " (%s)", e.detail)
	}
	return b.String()
}

// Unwrap exposes both the errdefs kind and the underlying error, so that
// errdefs.IsNotFound and errors.Is(err, context.DeadlineExceeded) both work.
func (e *runtimeError) Unwrap() []error {
	return []error{e.kind, e.Err}
}

// newRuntimeError builds a runtimeError, reading runc's message from logPath
// (a JSON log written with --log-format json) when go-runc's error lacks it.
// When ctx is done, runc was killed for it: the context's error is the
// kind, and the message says so.
func newRuntimeError(ctx context.Context, step, containerID, execID, logPath string, err error) error {
	errText := errString(err)
	detail := strings.TrimSpace(errText)
	msg := lastRuntimeLogError(logPath)
	if out, status := splitRuncOutput(errText); out != "" {
		if msg == "" {
			msg = out
		}
		if out == msg {
			detail = status
		}
	}
	kind := classifyRuntimeMessage(msg + " " + errText)
	if cerr := ctx.Err(); cerr != nil {
		kind = cerr
		if msg == "" {
			msg = "runc killed: " + cerr.Error()
		}
	}
	return &runtimeError{
		Step:        step,
		ContainerID: containerID,
		ExecID:      execID,
		Message:     msg,
		Err:         err,
		kind:        kind,
		detail:      detail,
	}
}

// withKind returns err with its errdefs kind replaced by kind when it is a
// runtimeError, so that it is that kind only. Other errors, and one whose
// runc was killed for its context, are wrapped: they are kind as well as
// what they were.
func withKind(err, kind error) error {
	var re *runtimeError
	if errors.As(err, &re) && !errors.Is(re.kind, context.Canceled) && !errors.Is(re.kind, context.DeadlineExceeded) {
		copied := *re
		copied.kind = kind
		return &copied
	}
	return fmt.Errorf("%w: %w", kind, err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// runcExitStatus finds the "exit status N: " that go-runc puts between its
// own words and runc's output: "<path> did not terminate successfully: exit
// status 1: <output>" (go-runc v1.2), or "exit status 1: <output>" (older).
var runcExitStatus = regexp.MustCompile(`(?:^|: )(exit status -?[0-9]+)(?:: |$)`)

// runcOutputMessage pulls runc's own words out of a go-runc error's text.
func runcOutputMessage(s string) string {
	msg, _ := splitRuncOutput(s)
	return msg
}

// splitRuncOutput splits a go-runc error's text into runc's output, made
// one line, and go-runc's "exit status N". Both are "" when the text is not
// of that form.
func splitRuncOutput(s string) (output, status string) {
	loc := runcExitStatus.FindStringSubmatchIndex(s)
	if loc == nil {
		return "", ""
	}
	status = s[loc[2]:loc[3]]
	var lines []string
	for _, line := range strings.Split(s[loc[1]:], "\n") {
		if line = strings.TrimSpace(logfmtMessage(line)); line != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; "), status
}

// logfmtMessage returns the msg of a logrus text line (time="..."
// level=error msg="..."), which runc prints when it has no --log; any other
// line is returned as it is.
func logfmtMessage(line string) string {
	if !strings.HasPrefix(line, "time=") {
		return line
	}
	i := strings.Index(line, " msg=")
	if i < 0 {
		return line
	}
	rest := line[i+len(" msg="):]
	if strings.HasPrefix(rest, `"`) {
		if unq, err := strconv.QuotedPrefix(rest); err == nil {
			if msg, err := strconv.Unquote(unq); err == nil {
				return msg
			}
		}
		return strings.Trim(rest, `"`)
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		return rest[:j]
	}
	return rest
}

// lastRuntimeLogError returns the last error-level message from a runc JSON
// log, or "" when there is none.
func lastRuntimeLogError(path string) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil {
			continue
		}
		if entry.Level == "error" || entry.Level == "fatal" {
			last = entry.Msg
		}
	}
	return last
}

// classifyRuntimeMessage maps runc's wording onto an errdefs kind.
func classifyRuntimeMessage(msg string) error {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "context deadline exceeded"):
		return context.DeadlineExceeded
	case strings.Contains(m, "context canceled"):
		return context.Canceled
	case strings.Contains(m, "does not exist"), strings.Contains(m, "not found"), strings.Contains(m, "no such file"):
		return errdefs.ErrNotFound
	case strings.Contains(m, "already exists"), strings.Contains(m, "with id exists"):
		return errdefs.ErrAlreadyExists
	case strings.Contains(m, "not running"), strings.Contains(m, "stopped"), strings.Contains(m, "cannot exec"),
		strings.Contains(m, "no such process"),
		strings.Contains(m, "not paused"), strings.Contains(m, "is paused"), strings.Contains(m, "cannot start"):
		return errdefs.ErrFailedPrecondition
	case strings.Contains(m, "invalid"), strings.Contains(m, "unknown signal"), strings.Contains(m, "out of range"):
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnknown
}

// errDeleted is what every operation on a deleted container returns.
func errDeleted(containerID string) error {
	return fmt.Errorf("runckit: container %q has been deleted: %w", containerID, errdefs.ErrNotFound)
}
