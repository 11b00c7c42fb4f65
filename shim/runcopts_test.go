package runckitshim

import (
	"bytes"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
)

// goTOML is what the shim did before decodeRuncOptions: go-toml with
// unknown fields refused. It stays here as the reference the decoder is
// held to.
func goTOML(body string) (*options.Options, error) {
	o := &options.Options{}
	d := toml.NewDecoder(bytes.NewReader([]byte(body)))
	d.DisallowUnknownFields()
	return o, d.Decode(o)
}

// The TOML bodies CRI makes of a runtime's options table decode as go-toml
// decodes them, and what go-toml refuses is refused as InvalidArgument.
func TestDecodeRuncOptionsMatchesGoTOML(t *testing.T) {
	good := []string{
		"",
		"# nothing\n\n",
		"BinaryName = \"/usr/bin/runc\"\nSystemdCgroup = true\nRoot = '/run/x'\n",
		"binaryname = \"runc\" # a comment\nsystemdcgroup=false\n",
		"IoUid = 1000\nIoGid = 1_000\nTaskApiVersion = 0x3\n",
		"NoPivotRoot = true\r\nNoNewKeyring = true\r\nShimCgroup = \"/a\\tb\\\"c\\u00e9\"\n",
		"\"BinaryName\" = 'C:\\path'\n",
		"CriuImagePath = \"\"\nCriuWorkPath = \"/w\"\nTaskApiAddress = \"unix:///x\"\n",
		"  BinaryName   =   \"crun\"   \n",
	}
	for _, body := range good {
		want, werr := goTOML(body)
		if werr != nil {
			t.Fatalf("go-toml refuses %q: %v (fix the case)", body, werr)
		}
		got := &options.Options{}
		if err := decodeRuncOptions([]byte(body), got); err != nil {
			t.Errorf("decodeRuncOptions(%q) = %v; go-toml gives %v", body, err, want)
			continue
		}
		if !proto.Equal(got, want) {
			t.Errorf("decodeRuncOptions(%q) = %v; go-toml gives %v", body, got, want)
		}
	}
	bad := []string{
		"NoSuchOption = 1\n",
		"BinaryName\n",
		"BinaryName = \n",
		"BinaryName = runc\n",
		"BinaryName = \"runc\n",
		"BinaryName = 'runc\n",
		"BinaryName = 1\n",
		"SystemdCgroup = \"true\"\n",
		"SystemdCgroup = yes\n",
		"IoUid = -1\n",
		"IoUid = 4294967296\n",
		"IoUid = 1__0\n",
		"IoUid = 012\n",
		"IoUid = 1.5\n",
		"IoUid = [1]\n",
		"BinaryName = \"a\" \"b\"\n",
		"BinaryName = \"a\"\nBinaryName = \"b\"\n",
		"[options]\nBinaryName = \"a\"\n",
		"options.BinaryName = \"a\"\n",
		"BinaryName = { x = 1 }\n",
		"= 1\n",
		"{",
	}
	for _, body := range bad {
		if _, err := goTOML(body); err == nil {
			t.Fatalf("go-toml takes %q (fix the case)", body)
		}
		err := decodeRuncOptions([]byte(body), &options.Options{})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("decodeRuncOptions(%q) = %v; want InvalidArgument", body, err)
		}
	}
	// Valid TOML that no options table of runc's needs, and that CRI's
	// encoder does not write for a one-line string: refused with a reason.
	for _, body := range []string{`BinaryName = """runc"""`, `BinaryName = '''runc'''`} {
		if err := decodeRuncOptions([]byte(body), &options.Options{}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "multi-line") {
			t.Errorf("decodeRuncOptions(%q) = %v; want InvalidArgument naming the multi-line string", body, err)
		}
	}
}

// Whatever the body, the decoder returns a value or InvalidArgument, and
// takes nothing go-toml refuses.
func FuzzDecodeRuncOptions(f *testing.F) {
	f.Add("BinaryName = \"runc\"\nSystemdCgroup = true\nIoUid = 7\n")
	f.Add("Root = '/x' # c\n")
	f.Fuzz(func(t *testing.T, body string) {
		got := &options.Options{}
		err := decodeRuncOptions([]byte(body), got)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		want, werr := goTOML(body)
		if werr != nil {
			t.Fatalf("decoder takes %q as %v; go-toml refuses it: %v", body, got, werr)
		}
		if werr == nil && !proto.Equal(got, want) {
			t.Fatalf("decoder reads %q as %v; go-toml as %v", body, got, want)
		}
	})
}
