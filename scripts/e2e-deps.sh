#!/usr/bin/env bash
# Installs the real servers and clients the end-to-end tests drive, from
# Debian's packages, only when missing. Their own services are not started:
# the tests run them in namespaces of their own.
set -euo pipefail

pkgs=(dnsmasq-base unbound dnsperf sip-tester kamailio ngtcp2-server ngtcp2-client)
need=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
	echo "e2e-deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	# Packaged daemons must not start on install (policy-rc.d 101).
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
