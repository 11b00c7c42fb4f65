package main

import "testing"

func TestParseArgs(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want invocation
	}{
		{[]string{"--version"}, invocation{}},
		{[]string{"--root", "/r", "--log", "/l", "--log-format", "json", "--systemd-cgroup", "create", "--bundle", "b", "id"},
			invocation{sub: "create", log: "/l"}},
		{[]string{"--root=/r", "--debug", "--log=/g", "--log", "/e", "exec", "--process", "p", "--detach", "id"},
			invocation{sub: "exec", log: "/e"}},
		{[]string{"--criu", "c", "--rootless", "true", "run", "--preserve-fds", "2", "--log", "/x", "id"},
			invocation{sub: "run", log: "/x", preserveFDs: 2}},
		{[]string{"--root", "list", "delete", "id"}, invocation{sub: "delete"}},
	} {
		if got := parseArgs(tt.args); got != tt.want {
			t.Errorf("parseArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
		}
	}
}
