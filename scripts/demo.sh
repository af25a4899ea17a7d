#!/usr/bin/env bash
# The demo of grmwrap's main job: an unmodified UDP server (the bundled C
# echo server) runs under grmwrap, clients keep talking to it, and two
# upgrades replace it while no datagram is lost. Runs in a network namespace
# of its own and cleans up after itself. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "demo: run as root (grmwrap needs root: seccomp listeners, pidfd_getfd, BPF)" >&2
	exit 1
fi
[[ -x bin/grmwrap && -x bin/grmload && -x bin/echo-server ]] || make -s build examples

ns=grmwrap-demo-$$
work=$(mktemp -d)
rt=$work/run
cleanup() {
	[[ -n ${gpid:-} ]] && kill "$gpid" 2>/dev/null && wait "$gpid" 2>/dev/null
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
status() { bin/grmwrap status --runtime-dir "$rt" "$sup" | sed 's/^/   /' | head -"${1:-8}"; }

step "1. start: grmwrap -- bin/echo-server 5353 (the server knows nothing of grmwrap)"
ip netns exec "$ns" bin/grmwrap --runtime-dir "$rt" --flow-timeout 2s --drain-timeout 3s \
	-- bin/echo-server 5353 >"$work/server.out" 2>"$work/grmwrap.log" &
gpid=$!
for _ in $(seq 100); do [[ -S $rt/$gpid.sock ]] && grep -q ready "$work/server.out" && break; sleep 0.05; done
sup=$gpid
echo "   server: $(head -1 "$work/server.out")"
status 4

step "2. steady load: 32 flows, 2000 datagrams/s for 9 s (bin/grmload)"
ip netns exec "$ns" bin/grmload -addr 127.0.0.1:5353 -flows 32 -rate 2000 -duration 9s -grace 1s >"$work/load.json" &
lpid=$!
sleep 2

step "3. first upgrade: grmwrap upgrade $sup"
bin/grmwrap upgrade --runtime-dir "$rt" "$sup" | sed 's/^/   /'
bin/grmwrap status --runtime-dir "$rt" --json "$sup" >"$work/status1.json"
status 5
sleep 3

step "4. second upgrade, while the load goes on"
bin/grmwrap upgrade --runtime-dir "$rt" "$sup" | sed 's/^/   /'
status 6
bin/grmwrap status --runtime-dir "$rt" --json "$sup" >"$work/status2.json"

step "5. waiting for the load to finish"
set +e
wait "$lpid"
set -e
sleep 1
bin/grmwrap status --runtime-dir "$rt" --json "$sup" >"$work/status3.json"
status 12

step "6. what each generation answered"
python3 - "$work/load.json" "$work/status3.json" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
status = json.load(open(sys.argv[2]))
gen_of = {str(g["pid"]): g["generation"] for g in status["generations"]}
rows = {}
for f in load["flows"]:
    for pid, n in f["answered_by"].items():
        r = rows.setdefault(pid, [0, 0])
        r[0] += n
        r[1] += 1
print("   %-10s %-8s %-10s %-6s" % ("generation", "pid", "datagrams", "flows"))
for pid, (n, flows) in sorted(rows.items(), key=lambda kv: gen_of.get(kv[0], 0)):
    print("   %-10s %-8s %-10d %-6d" % (gen_of.get(pid, "?"), pid, n, flows))
moved = sum(1 for f in load["flows"] if len(f["order"]) > 1)
back = sum(1 for f in load["flows"] if len(f["order"]) != len(set(f["order"])))
print("   sent %d, answered %d, lost %d; %d flows moved to a newer generation when the old one was stopped, %d went back" %
      (load["sent"], load["answered"], load["lost"], moved, back))
sys.exit(0 if load["lost"] == 0 and back == 0 else 1)
PY

step "7. grmwrap's log (one line per step of each upgrade and drain)"
grep -E 'upgrade|drain|quiesce|generation exited|instance started' "$work/grmwrap.log" | sed 's/^time=[^ ]* /   /'

kill -TERM "$gpid"
set +e
wait "$gpid"; code=$?
set -e
gpid=
step "done: two upgrades under load, 0 datagrams lost; grmwrap exited $code"
[[ $code -eq 0 ]]
