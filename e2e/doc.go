// Package e2e holds grmwrap's end-to-end tests: real servers from Debian
// packages (dnsmasq, unbound, sipp, kamailio, ngtcp2) and a quic-go server,
// run as packaged under grmwrap and driven by real clients across upgrades.
// Each scenario has a negative control, the same run with a plain
// stop-and-start restart, that shows the test can fail.
//
// The tests carry the build tag e2e: `make e2e` installs the packages
// (scripts/e2e-deps.sh) and runs them as root, each in its own network,
// mount and PID namespace.
package e2e
