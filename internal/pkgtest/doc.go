// Package pkgtest holds the test of grmwrap's Debian package: `make deb`
// builds it, and the test unpacks it into a scratch root and checks what it
// holds, down to the packaged static binary serving an unmodified server.
// It has no code of its own.
package pkgtest
