#!/usr/bin/env python3
"""An "unmodified" UDP echo server in Python for grmwrap's integration tests.

Usage: echo.py [--addr ADDR] [--tcp] [--reuseport] PORT

Same contract as echo.c and echo-go. stdout carries exactly these lines,
each flushed at once:

    ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=<0|1|-1> port=<port>
    bind-error errno=<n> <strerror text>   (then exit status 3)
    signal <n>                             (SIGTERM/SIGINT: exit 0;
                                            SIGHUP/SIGUSR1: go on)

Every datagram is answered with "<pid> " + payload; the payload "exit N" is
answered and then the server exits with status N. Usage errors exit with
status 2, other setup failures with status 1.
"""

import ipaddress
import os
import re
import select
import signal
import socket
import sys

EXIT_RE = re.compile(rb"exit ([0-9]{1,9})")


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def usage(msg):
    sys.stderr.write("echo.py: %s\n" % msg)
    sys.stderr.write("usage: echo.py [--addr ADDR] [--tcp] [--reuseport] PORT\n")
    sys.exit(2)


def fatal(what, err):
    sys.stderr.write("echo.py: %s: %s\n" % (what, err))
    sys.exit(1)


def bind_or_exit(sock, addr):
    try:
        sock.bind(addr)
    except OSError as e:
        if e.errno is None:
            fatal("bind", e)
        say("bind-error errno=%d %s" % (e.errno, os.strerror(e.errno)))
        sys.exit(3)


def parse_args(argv):
    addr, tcp, reuseport, port = "0.0.0.0", False, False, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--addr":
            i += 1
            if i >= len(argv):
                usage("--addr needs an argument")
            addr = argv[i]
        elif a == "--tcp":
            tcp = True
        elif a == "--reuseport":
            reuseport = True
        elif len(a) > 1 and a.startswith("-"):
            usage("unknown option " + a)
        elif port is None:
            if not re.fullmatch(r"[0-9]+", a) or int(a) > 65535:
                usage("PORT must be a decimal number from 0 to 65535")
            port = int(a)
        else:
            usage("too many arguments")
        i += 1
    if port is None:
        usage("missing PORT")
    return addr, tcp, reuseport, port


def on_signal(signum, frame):
    say("signal %d" % signum)
    if signum in (signal.SIGTERM, signal.SIGINT):
        sys.exit(0)


def main():
    addr, want_tcp, want_reuseport, port = parse_args(sys.argv[1:])

    # Python ignores SIGPIPE and SIGXFSZ at start-up; a C server would not.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(s, on_signal)

    if ":" in addr:
        family = socket.AF_INET6
        try:
            ip = ipaddress.IPv6Address(addr)
        except ValueError:
            usage("--addr is not an IPv6 literal")
    else:
        family = socket.AF_INET
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            usage("--addr is not an IPv4 literal")
    dual_stack = family == socket.AF_INET6 and ip.is_unspecified

    try:
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if dual_stack:
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if want_reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError as e:
        fatal("socket setup", e)
    bind_or_exit(udp, (addr, port))
    bound_port = udp.getsockname()[1]

    tcp = None
    if want_tcp:
        # Same address; with PORT 0 the TCP socket takes the UDP port.
        try:
            tcp = socket.socket(family, socket.SOCK_STREAM)
            if dual_stack:
                tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError as e:
            fatal("socket setup", e)
        bind_or_exit(tcp, (addr, bound_port))
        try:
            tcp.listen(16)
        except OSError as e:
            fatal("listen", e)

    udp_rp = int(udp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0)
    tcp_rp = -1
    if tcp is not None:
        tcp_rp = int(tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0)
    pid = os.getpid()
    say("ready pid=%d udp_reuseport=%d tcp_reuseport=%d port=%d"
        % (pid, udp_rp, tcp_rp, bound_port))

    # Python runs signal handlers between bytecodes, so a signal that lands
    # just before a blocking recvfrom() would wait for the next datagram.
    # With a wakeup fd in the select() set no signal can slip through: the
    # C-level handler makes the pipe readable, select() returns and the
    # Python handler runs (SIGTERM/SIGINT raise SystemExit out of the loop).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    prefix = b"%d " % pid
    while True:
        readable, _, _ = select.select([udp, wake_r], [], [])
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
        if udp not in readable:
            continue
        try:
            data, peer = udp.recvfrom(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as e:
            sys.stderr.write("echo.py: recvfrom: %s\n" % e)
            continue
        try:
            udp.sendto(prefix + data, peer)
        except OSError as e:
            sys.stderr.write("echo.py: sendto: %s\n" % e)
        m = EXIT_RE.fullmatch(data)
        if m:
            sys.exit(int(m.group(1)))


if __name__ == "__main__":
    main()
