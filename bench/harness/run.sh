#!/bin/bash
# Runs the harness bench: starts a private containerd and dockerd (Debian's
# docker.io, 20.10) under a temporary directory, runs TestHarnessBench
# against it, and stops both. Needs root, runc and busybox-static; installs
# docker.io when dockerd is missing. Arguments go to the test binary, e.g.
#   ./run.sh -rounds 3          a short run
#   ./run.sh -out /tmp/r.json   keep the committed results.json
set -eu -o pipefail
cd "$(dirname "$0")"
if ! command -v dockerd >/dev/null 2>&1; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
D=$(mktemp -d /tmp/runckit-harness-docker-XXXXXX)
mkdir -p "$D/ctd-root" "$D/ctd-state" "$D/data" "$D/exec"
stop() {
	[ -f "$D/dockerd.pid" ] && kill "$(cat "$D/dockerd.pid")" 2>/dev/null || true
	for _ in $(seq 100); do [ -S "$D/docker.sock" ] || break; sleep 0.1; done
	[ -n "${CTD:-}" ] && kill "$CTD" 2>/dev/null && wait "$CTD" 2>/dev/null || true
	umount -R "$D/data" "$D/exec" "$D/ctd-state" 2>/dev/null || true
	rm -rf "$D"
}
trap stop EXIT INT TERM
# Debian's containerd 1.6 (the docker.io dependency) and its shim, not
# others that come first in PATH.
DPATH=/usr/sbin:/usr/bin:/sbin:/bin
PATH=$DPATH /usr/bin/containerd --root "$D/ctd-root" --state "$D/ctd-state" --address "$D/containerd.sock" >"$D/containerd.log" 2>&1 &
CTD=$!
for _ in $(seq 100); do [ -S "$D/containerd.sock" ] && break; sleep 0.1; done
# The default bridge, iptables and userland proxy: testcontainers maps
# the container's port to one on the host's loopback through them.
PATH=$DPATH /usr/sbin/dockerd --containerd "$D/containerd.sock" --data-root "$D/data" --exec-root "$D/exec" \
	-H "unix://$D/docker.sock" --pidfile "$D/dockerd.pid" >"$D/dockerd.log" 2>&1 &
for _ in $(seq 300); do [ -S "$D/docker.sock" ] && break; sleep 0.1; done
[ -S "$D/docker.sock" ] || { tail -20 "$D/dockerd.log"; exit 1; }
export DOCKER_HOST="unix://$D/docker.sock" TESTCONTAINERS_RYUK_DISABLED=true
# -v for the table the test prints; the per-test lines are dropped.
go test -v -count=1 -timeout 60m -run '^TestHarnessBench$' . -args "$@" |
	grep -Ev '^ *(=== (RUN|PAUSE|CONT)|--- PASS)'
