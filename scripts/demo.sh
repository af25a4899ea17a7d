#!/usr/bin/env bash
# The demo of grmwrap's main job so far: an unmodified UDP server (the bundled
# C echo server) runs under grmwrap, which takes over its UDP bind. Runs in a
# network namespace of its own and cleans up after itself. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "demo: run as root (grmwrap needs root: seccomp listeners, pidfd_getfd)" >&2
	exit 1
fi
[[ -x bin/grmwrap && -x bin/echo-server ]] || make -s build examples

ns=grmwrap-demo-$$
work=$(mktemp -d)
cleanup() {
	[[ -n ${gpid:-} ]] && kill "$gpid" 2>/dev/null && wait "$gpid" 2>/dev/null
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
inns() { ip netns exec "$ns" "$@"; }

# send PORT MESSAGE: one datagram to 127.0.0.1:PORT, print the reply.
send() {
	inns python3 -c '
import socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(2)
c.sendto(sys.argv[2].encode(), ("127.0.0.1", int(sys.argv[1])))
print("   reply:", c.recv(2048).decode())' "$1" "$2"
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. the server alone: it binds UDP and TCP port 5353 and reports SO_REUSEPORT on each"
ip netns exec "$ns" bin/echo-server --tcp 5353 >"$work/plain.out" 2>&1 &
ppid=$!
for _ in $(seq 50); do [[ -s $work/plain.out ]] && break; sleep 0.1; done
echo "   server: $(head -1 "$work/plain.out")"
kill "$ppid"; wait "$ppid" 2>/dev/null || true

step "2. the same binary, unmodified, under grmwrap"
echo "   \$ grmwrap -- bin/echo-server --tcp 5353"
ip netns exec "$ns" bin/grmwrap -- bin/echo-server --tcp 5353 >"$work/out" 2>"$work/log" &
gpid=$!
for _ in $(seq 50); do [[ -s $work/out ]] && break; sleep 0.1; done
echo "   server: $(head -1 "$work/out")"
echo "   grmwrap log:"
sed 's/^/     /' "$work/log"
grep -q 'udp_reuseport=1 tcp_reuseport=0' "$work/out" || { echo "demo: UDP socket not managed" >&2; exit 1; }

step "3. clients talk to it as before"
send 5353 "hello from client 1"
send 5353 "hello from client 2"

step "4. the sockets, as the kernel sees them"
inns ss -uanp | sed 's/^/   /'

step "5. SIGTERM to grmwrap is forwarded; grmwrap exits with the server's status"
kill -TERM "$gpid"
set +e
wait "$gpid"; code=$?
set -e
gpid=
echo "   server: $(tail -1 "$work/out")"
echo "   grmwrap exit status: $code"
[[ $code -eq 0 ]] || exit 1
step "done: the unmodified server ran with its UDP socket managed by grmwrap"
