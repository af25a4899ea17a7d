// Package nstest runs an integration test in namespaces of its own.
//
// Enter re-executes the current test binary for one test inside a new
// network, mount and PID namespace, with loopback up, a fresh /proc, a
// bpffs of its own at /sys/fs/bpf and a private /run/grmwrap. The
// child is PID 1 of its PID namespace, so when it exits (or is killed) the
// kernel kills every process the test started; its network namespace and
// mounts vanish with it. Cleanup therefore holds even when the test fails,
// panics or times out.
//
// Invariants: the test body runs only in the child; the parent runs no test
// code and fails when the child fails. A test that cannot have namespaces
// (not root) skips with the reason, unless GRMWRAP_REQUIRE_PRIVILEGED=1 (set
// by CI), where it fails instead.
package nstest
