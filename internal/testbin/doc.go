// Package testbin builds and runs the programs that grmwrap's tests need:
// the grmwrap binary itself and the test servers under testdata/servers,
// which play "unmodified" UDP servers (echo servers in C, Go and Python, and
// alrmbind, which binds while SIGALRM keeps interrupting it).
//
// Each binary is built at most once per test process, into <module root>/bin/test,
// by way of a temporary directory and a rename so that test processes running in
// parallel never see a half-written file. Builders return absolute paths and fail
// the test, with the compiler output, if the build fails.
//
// Server and its helpers start a server, read its stdout line by line and parse
// the ready line that every echo server prints:
//
//	ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=<0|1|-1> port=<port>
package testbin
