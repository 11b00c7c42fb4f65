package runckittest_test

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit/runckittest"
)

func TestMain(m *testing.M) {
	if err := runckittest.Check(); err != nil {
		os.Stderr.WriteString("runckittest tests need real containers: " + err.Error() + "\n")
		os.Exit(1)
	}
	code := m.Run()
	runckittest.Cleanup()
	os.Exit(code)
}

// TestHarnessHTTP: files copied in before start, a port wait, a GET through
// the container's own loopback, a file read out, a log wait.
func TestHarnessHTTP(t *testing.T) {
	t.Parallel()
	c := runckittest.Start(t, runckittest.Options{
		Args:  []string{"sh", "-c", "echo starting; exec httpd -f -vv -p 8080 -h /www"},
		Files: []runckittest.File{{Path: "/www/index.html", Data: []byte("copied in\n")}},
		Wait:  []runckittest.Strategy{runckittest.ForLog("^starting$"), runckittest.ForPort(8080)},
	})
	resp, err := c.HTTPClient().Get("http://localhost:8080/index.html")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "copied in\n" {
		t.Errorf("GET body %q", body)
	}
	// The writable layer is the container's: a write there reads back.
	if err := c.Command("sh", "-c", "echo written > /www/out").Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, err := c.ReadFile("/www/out"); err != nil || string(got) != "written\n" {
		t.Errorf("ReadFile = %q, %v", got, err)
	}
	if _, err := c.ReadFile("/nope"); !errdefs.IsNotFound(err) {
		t.Errorf("ReadFile of a missing file: %v, want ErrNotFound", err)
	}
}

// TestHarnessWaits: a command wait, an exit wait with the right code, and
// failures: a wrong exit code at once, a log line that never comes by its
// deadline, a port wait cut short by init's exit.
func TestHarnessWaits(t *testing.T) {
	t.Parallel()
	c := runckittest.Start(t, runckittest.Options{
		// The gap after /ready is long enough for the command wait to see it
		// on a loaded machine; ForExit waits out the rest.
		Args: []string{"sh", "-c", "sleep 0.3; touch /ready; sleep 3; echo done; exit 3"},
		Wait: []runckittest.Strategy{runckittest.ForCommand("test", "-e", "/ready")},
	})
	if err := runckittest.ForExit(3).WaitFor(context.Background(), c); err != nil {
		t.Errorf("ForExit(3): %v", err)
	}
	if got, err := c.ReadFile("/ready"); err != nil || len(got) != 0 {
		t.Errorf("ReadFile after exit = %q, %v", got, err)
	}
	if err := runckittest.ForExit(0).WaitFor(context.Background(), c); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("ForExit(0) of an exit 3: %v, want ErrFailedPrecondition", err)
	}
	if err := runckittest.ForPort(80).WaitFor(context.Background(), c); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("ForPort after init exited: %v, want ErrFailedPrecondition", err)
	}

	c2 := runckittest.Start(t, runckittest.Options{Args: []string{"sleep", "1000"}})
	start := time.Now()
	err := runckittest.ForLog("never").WithTimeout(300*time.Millisecond).WaitFor(context.Background(), c2)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "never") {
		t.Errorf("ForLog past its deadline: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 300ms wait took %v", d)
	}
}

// TestHarnessParallel: containers of parallel tests listen on the same
// port in their own namespaces.
func TestHarnessParallel(t *testing.T) {
	for i := 0; i < 4; i++ {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			c := runckittest.Start(t, runckittest.Options{
				Args: []string{"sh", "-c", "echo $HOSTNAME-" + string(rune('a'+i)) + " > /tmp/id; exec httpd -f -p 80 -h /tmp"},
				Wait: []runckittest.Strategy{runckittest.ForPort(80)},
			})
			resp, err := c.HTTPClient().Get("http://127.0.0.1/id")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.HasSuffix(strings.TrimSpace(string(body)), "-"+string(rune('a'+i))) {
				t.Errorf("container %d served %q", i, body)
			}
		})
	}
}
