package runckitshim

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/errdefs"
)

// joinCgroup (ShimCgroup) puts a process into the named cgroup in every
// hierarchy that has it, and refuses a cgroup that exists nowhere.
func TestJoinCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making cgroups needs root")
	}
	name := fmt.Sprintf("/rk-join-test-%d", os.Getpid())
	var dirs []string
	if cgroups.Mode() == cgroups.Unified {
		dirs = []string{filepath.Join("/sys/fs/cgroup", name)}
	} else {
		for _, ctrl := range []string{"pids", "memory"} {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", ctrl, name))
		}
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, d := range dirs {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove %s: %v", d, err)
			}
		}
	})
	if err := joinCgroup(name, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	in := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasSuffix(line, ":"+name) {
			in++
		}
	}
	if in != len(dirs) {
		t.Errorf("the process is in %s in %d hierarchies, want %d:\n%s", name, in, len(dirs), data)
	}
	if err := joinCgroup(name+"-missing", cmd.Process.Pid); err == nil || cgroups.Mode() != cgroups.Unified && !errdefs.IsNotFound(err) {
		t.Errorf("joinCgroup of a cgroup that does not exist = %v; want an error (NotFound on v1)", err)
	}
}
