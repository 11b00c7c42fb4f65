package runckit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// An adopted container has no template from its create; ProcessSpec reads
// the bundle's config.json instead, and says clearly when it can not.
func TestProcessSpecOfAdoptedContainerReadsBundle(t *testing.T) {
	bundle := t.TempDir()
	c := &Container{id: "adopted", bundle: bundle} // as LoadContainer leaves it: no procTemplate

	if _, err := c.ProcessSpec("true"); !errdefs.IsNotFound(err) {
		t.Errorf("ProcessSpec without config.json = %v, want ErrNotFound", err)
	}
	if cmd := c.Command("true"); !errdefs.IsNotFound(cmd.Err) || cmd.Spec == nil || cmd.Spec.Args[0] != "true" {
		t.Errorf("Command without config.json: Err = %v, Spec = %+v; want ErrNotFound and a spec to edit", cmd.Err, cmd.Spec)
	}
	cfg := filepath.Join(bundle, "config.json")
	os.WriteFile(cfg, []byte("{not json"), 0o600)
	if _, err := c.ProcessSpec("true"); !errdefs.IsDataLoss(err) {
		t.Errorf("ProcessSpec with a corrupt config.json = %v, want ErrDataLoss", err)
	}

	spec := specs.Spec{Process: &specs.Process{
		Terminal: true, Args: []string{"init"}, Cwd: "/srv", Env: []string{"A=1"},
		User: specs.User{UID: 7, GID: 8}, ApparmorProfile: "runckit-test", SelinuxLabel: "system_u:system_r:svirt_lxc_net_t:s0",
		ConsoleSize: &specs.Box{Height: 24, Width: 80},
	}}
	data, _ := json.Marshal(spec)
	os.WriteFile(cfg, data, 0o600)
	p, err := c.ProcessSpec("echo", "hi")
	if err != nil {
		t.Fatal(err)
	}
	if p.Terminal || p.ConsoleSize != nil || len(p.Args) != 2 || p.Args[0] != "echo" || p.Cwd != "/srv" ||
		p.User.UID != 7 || p.ApparmorProfile != "runckit-test" || p.SelinuxLabel == "" || p.Env[0] != "A=1" {
		t.Errorf("ProcessSpec = %+v, want config.json's process with args echo hi and no terminal", p)
	}
}

func TestStderrSaverKeepsStartAndEnd(t *testing.T) {
	s := &stderrSaver{half: 4}
	s.Write([]byte("ab"))
	if got := string(s.bytes()); got != "ab" {
		t.Errorf("short: %q", got)
	}
	s.Write([]byte("cdefgh"))
	s.Write([]byte("ijklmn"))
	if got, want := string(s.bytes()), "abcd\n... omitting 6 bytes ...\nklmn"; got != want {
		t.Errorf("long: %q, want %q", got, want)
	}
}
