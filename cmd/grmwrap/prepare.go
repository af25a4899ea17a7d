package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"

	"github.com/grmwrap/grmwrap/notify"
)

// prepare turns a validated configuration into what starting an instance
// needs. Every error is the operator's: a one-line reason.
func prepare(cfg runConfig) (notify.Spec, notify.Matcher, error) {
	var entries []notify.ListenAddr
	for _, l := range cfg.listen {
		la, err := notify.ParseListen(l)
		if err != nil {
			return notify.Spec{}, notify.Matcher{}, err
		}
		entries = append(entries, la)
	}
	path, err := exec.LookPath(cfg.command[0])
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return notify.Spec{}, notify.Matcher{}, fmt.Errorf("command %q not found", cfg.command[0])
		}
		return notify.Spec{}, notify.Matcher{}, fmt.Errorf("command %q: %w", cfg.command[0], err)
	}
	var cred *notify.Credential
	if cfg.user != "" {
		if cred, err = lookupCredential(cfg.user); err != nil {
			return notify.Spec{}, notify.Matcher{}, err
		}
	}
	spec := notify.Spec{
		Self: "/proc/self/exe",
		Path: path,
		Argv: cfg.command,
		// systemd hears about the service from grmwrap only; --ready
		// notify gives each instance a private NOTIFY_SOCKET.
		Env:   withoutEnv(os.Environ(), "NOTIFY_SOCKET"),
		Cred:  cred,
		Files: [3]*os.File{os.Stdin, os.Stdout, os.Stderr},
		// Off by default: a ring bypasses the trapped calls.
		AllowIOUring: cfg.allowIOUring,
	}
	if cfg.allowIOUring && cfg.log != nil {
		cfg.log.Warn("--allow-io-uring: the server may use io_uring, which can set socket options and bind without the filter seeing it (it could detach the steering program)")
	}
	return spec, notify.NewMatcher(entries), nil
}

// lookupCredential resolves USER[:GROUP] (names or numbers). Without GROUP
// the user's primary group and supplementary groups are used.
func lookupCredential(s string) (*notify.Credential, error) {
	name, group, hasGroup := strings.Cut(s, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("user %q not found", name)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gidStr := u.Gid
	var groups []uint32
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return nil, fmt.Errorf("group %q not found", group)
			}
		}
		gidStr = g.Gid
	} else if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if n, err := strconv.ParseUint(id, 10, 32); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	gid, err := strconv.ParseUint(gidStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("group %q: gid %q: %w", group, gidStr, err)
	}
	return &notify.Credential{UID: uint32(uid), GID: uint32(gid), Groups: groups}, nil
}
