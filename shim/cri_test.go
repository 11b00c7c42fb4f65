package runckitshim_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	criVersion   = "v1.37.0"
	pauseImage   = "registry.k8s.io/pause:3.10.2"
	criBusybox   = "docker.io/runckit/busybox:cri"
	criNamespace = "k8s.io"
)

// criConfig is containerd's CRI configuration for the test: a runtime
// handler runckit of type io.containerd.runckit.v1 with an options table,
// the sandbox image
// imported offline, no OOM score below containerd's own (the machine lacks
// CAP_SYS_RESOURCE), streaming on loopback.
const criConfig = `
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runckit"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runckit]
      runtime_type = "io.containerd.runckit.v1"
      # Sent as CRI's generic runtimeoptions.Options (a TOML body).
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runckit.options]
        BinaryName = "runc"
        SystemdCgroup = false

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "` + pauseImage + `"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`

// crictl runs crictl against the daemon and returns its trimmed stdout.
type crictl struct {
	t      *testing.T
	binary string
	config string
}

func (c crictl) run(args ...string) string {
	c.t.Helper()
	out, err := c.try(args...)
	if err != nil {
		c.t.Fatalf("crictl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (c crictl) try(args ...string) (string, error) {
	cmd := exec.Command(c.binary, append([]string{"--config", c.config, "--timeout", "60s"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%v: %s%s", err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// TestCRIPodWithRunckit: containerd's CRI plugin with a runtime handler
// runckit, driven by crictl: a host-network pod sandbox and a busybox
// container (both images imported offline) run on the runckit shim; exec,
// logs, stop and remove work, and nothing of the pod's is left running.
func TestCRIPodWithRunckit(t *testing.T) {
	requireRoot(t)
	bin, err := findOrInstall(t, "crictl", "sigs.k8s.io/cri-tools/cmd/crictl@"+criVersion)
	if err != nil {
		t.Skipf("crictl %s is not installed and could not be built: %v", criVersion, err)
	}
	d := startContainerd(t, criNamespace, true, criConfig)
	ctx := d.testCtx(3 * time.Minute)
	d.importImage(ctx, pauseImage, "/bin/sleep", "2147483647")
	d.importImage(ctx, criBusybox, "/bin/sh")

	cfgPath := filepath.Join(d.dir, "crictl.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", d.sock, d.sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	cri := crictl{t: t, binary: bin, config: cfgPath}
	if out := cri.run("images"); !strings.Contains(out, "runckit/busybox") || !strings.Contains(out, "registry.k8s.io/pause") {
		t.Fatalf("CRI does not list the imported images: %s", out)
	}

	logDir := filepath.Join(d.dir, "pod-logs")
	suffix := fmt.Sprint(time.Now().UnixNano())
	pod := map[string]any{
		"metadata":      map[string]any{"name": "rkcri-pod", "namespace": "default", "uid": "rkcri-" + suffix, "attempt": 0},
		"log_directory": logDir,
		"linux": map[string]any{
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}, // NODE: host network
		},
	}
	ctr := map[string]any{
		"metadata": map[string]any{"name": "rkcri-busybox"},
		"image":    map[string]any{"image": criBusybox},
		"command":  []string{"/bin/sh", "-c", "echo hello from the runckit pod; trap 'exit 0' TERM; while true; do sleep 0.1; done"},
		"log_path": "busybox.log",
		"linux":    map[string]any{},
	}
	podPath := filepath.Join(d.dir, "pod.json")
	ctrPath := filepath.Join(d.dir, "container.json")
	for path, v := range map[string]any{podPath: pod, ctrPath: ctr} {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	podID := cri.run("runp", "--runtime", "runckit", podPath)
	t.Cleanup(func() {
		_, _ = cri.try("stopp", podID)
		_, _ = cri.try("rmp", "-f", podID)
	})
	var podInfo struct {
		Status struct {
			State          string `json:"state"`
			RuntimeHandler string `json:"runtimeHandler"`
		} `json:"status"`
		Info struct {
			RuntimeType string `json:"runtimeType"`
			Pid         int    `json:"pid"`
		} `json:"info"`
	}
	inspectp := cri.run("inspectp", podID)
	if err := json.Unmarshal([]byte(inspectp), &podInfo); err != nil {
		t.Fatal(err)
	}
	if podInfo.Status.State != "SANDBOX_READY" || podInfo.Status.RuntimeHandler != "runckit" || podInfo.Info.RuntimeType != "io.containerd.runckit.v1" {
		t.Fatalf("pod state %s handler %q type %q; want SANDBOX_READY on runckit, io.containerd.runckit.v1\n%s",
			podInfo.Status.State, podInfo.Status.RuntimeHandler, podInfo.Info.RuntimeType, inspectp)
	}
	assertRunckitShim(t, podInfo.Info.Pid, "pod sandbox")

	ctrID := cri.run("create", podID, ctrPath, podPath)
	cri.run("start", ctrID)
	var ctrInfo struct {
		Status struct {
			State string `json:"state"`
		} `json:"status"`
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(cri.run("inspect", ctrID)), &ctrInfo); err != nil {
		t.Fatal(err)
	}
	if ctrInfo.Status.State != "CONTAINER_RUNNING" {
		t.Fatalf("container state %s; want CONTAINER_RUNNING", ctrInfo.Status.State)
	}
	assertRunckitShim(t, ctrInfo.Info.Pid, "container")

	if out := cri.run("exec", "-s", ctrID, "sh", "-c", "echo exec in $(hostname); exit 0"); !strings.HasPrefix(out, "exec in ") {
		t.Errorf("exec -s output %q", out)
	}
	if out, err := cri.try("exec", "-s", ctrID, "sh", "-c", "exit 3"); err == nil {
		t.Errorf("exec of exit 3 succeeded: %q", out)
	}
	// A streamed exec, through containerd's streaming server.
	if out := cri.run("exec", ctrID, "cat", "/etc/passwd"); !strings.HasPrefix(out, "root:") {
		t.Errorf("streamed exec output %q", out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := cri.try("logs", ctrID)
		if strings.Contains(out, "hello from the runckit pod") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs %q; want the container's greeting", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	cri.run("stop", "--timeout", "10", ctrID)
	if err := json.Unmarshal([]byte(cri.run("inspect", ctrID)), &ctrInfo); err != nil {
		t.Fatal(err)
	}
	var exited struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(cri.run("inspect", ctrID)), &exited); err != nil {
		t.Fatal(err)
	}
	if exited.Status.State != "CONTAINER_EXITED" || exited.Status.ExitCode != 0 {
		t.Errorf("after stop: state %s exit %d; want CONTAINER_EXITED 0 (SIGTERM trapped)", exited.Status.State, exited.Status.ExitCode)
	}
	cri.run("rm", ctrID)
	if out := cri.run("ps", "-a", "-q", "--pod", podID); out != "" {
		t.Errorf("containers left in the pod: %q", out)
	}
	cri.run("stopp", podID)
	cri.run("rmp", podID)
	if out := cri.run("pods", "-q"); strings.Contains(out, podID) {
		t.Errorf("pod %s still listed: %q", podID, out)
	}
	for _, pid := range []int{podInfo.Info.Pid, ctrInfo.Info.Pid} {
		if fileExists(fmt.Sprintf("/proc/%d", pid)) && !isZombie(uint32(pid)) {
			t.Errorf("process %d of the pod still runs", pid)
		}
	}
}

// assertRunckitShim checks that pid's parent is the runckit shim.
func assertRunckitShim(t *testing.T, pid int, what string) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("%s has no pid", what)
	}
	ppid, err := parentPid(uint32(pid))
	if err != nil {
		t.Fatal(err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
	if !strings.Contains(string(cmdline), "containerd-shim-runckit-v1") {
		t.Fatalf("%s's parent %d is %q; want containerd-shim-runckit-v1", what, ppid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
}
