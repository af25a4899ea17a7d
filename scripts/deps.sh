#!/usr/bin/env bash
# Installs what building and testing grmwrap needs on a fresh Debian machine,
# only when it is missing. Idempotent; needs root when something is missing.
set -euo pipefail

need=()
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Regenerating the BPF objects (make generate, CI's check) needs the pinned
# compiler and libbpf's headers; building does not (the objects are
# committed).
if [[ ${GRMWRAP_DEPS_GENERATE:-0} == 1 ]]; then
	command -v clang-14 >/dev/null 2>&1 || need+=(clang-14)
	command -v llvm-strip >/dev/null 2>&1 || need+=(llvm)
	dpkg -s libbpf-dev >/dev/null 2>&1 || need+=(libbpf-dev)
fi

if ((${#need[@]})); then
	echo "deps: installing ${need[*]}" >&2
	if [[ $(id -u) -ne 0 ]]; then
		echo "deps: need root to install ${need[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
