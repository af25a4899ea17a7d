package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/grmwrap/grmwrap/bpf"
)

// flowTable reads and edits the data plane's flow table for the
// benchmark: clients are found by their 4-tuple (see tuple).
type flowTable struct {
	dp *bpf.DataPlane
	m  *ebpf.Map // a second handle on the table, for its fdinfo
}

// remoteOf is the address and port of synthetic client i, as a flow
// entry shows it (IPv4 v4-mapped).
func remoteOf(i int) netip.AddrPort {
	ip, port := tuple(i)
	return netip.AddrPortFrom(netip.AddrFrom16(netip.AddrFrom4(ip).As16()), port)
}

func openFlowTable(dp *bpf.DataPlane) (*flowTable, error) {
	prog, err := dp.Program(benchGroup)
	if err != nil {
		return nil, err
	}
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("program info: %w", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, errors.New("program info has no map ids")
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("open map %d: %w", id, err)
		}
		if mi, err := m.Info(); err == nil && mi.Name == "flows" {
			return &flowTable{dp: dp, m: m}, nil
		}
		m.Close()
	}
	return nil, errors.New("the program has no map named flows")
}

func (t *flowTable) close() { t.m.Close() }

// live returns the table's flows of group gid that have not been expired
// by the benchmark, by remote address.
func (t *flowTable) live(gid uint32, port uint16) (map[netip.AddrPort]bpf.Flow, error) {
	all, err := t.dp.Flows()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.AddrPort]bpf.Flow, len(all))
	for _, f := range all {
		if f.Group == gid && f.SeenNs != 0 && f.Local.Port() == port {
			out[f.Remote] = f
		}
	}
	return out, nil
}

// checkFlowKey fails unless the program created a flow for client i: the
// benchmark's clients are what the table shows.
func (t *flowTable) checkFlowKey(gid uint32, i int, port uint16) error {
	flows, err := t.live(gid, port)
	if err != nil {
		return err
	}
	f, ok := flows[remoteOf(i)]
	if !ok {
		return fmt.Errorf("no flow entry for client %d (%s)", i, remoteOf(i))
	}
	if want := netip.AddrPortFrom(netip.AddrFrom16(netip.AddrFrom4(serverIP).As16()), port); f.Local != want {
		return fmt.Errorf("flow of client %d: local %s, want %s", i, f.Local, want)
	}
	return nil
}

// expireRange ends the flows of clients [from, to): their entries stay
// (the table reuses them for new flows) but no longer count as live.
func (t *flowTable) expireRange(gid uint32, from, to int, port uint16) error {
	flows, err := t.live(gid, port)
	if err != nil {
		return err
	}
	for i := from; i < to; i++ {
		if f, ok := flows[remoteOf(i)]; ok {
			if err := t.dp.ExpireFlow(f.Pos); err != nil {
				return err
			}
		}
	}
	return nil
}

// count returns how many live flows group gid has on port.
func (t *flowTable) count(gid uint32, port uint16) (int, error) {
	flows, err := t.live(gid, port)
	return len(flows), err
}

// fdinfo reads the "name:\tvalue" lines of /proc/self/fdinfo/<fd>.
func fdinfo(fd int) (map[string]string, error) {
	f, err := os.Open("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return nil, fmt.Errorf("read fdinfo: %w", err)
	}
	defer f.Close()
	out := make(map[string]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if ok {
			out[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read fdinfo: %w", err)
	}
	return out, nil
}

// memlock returns the map's memlock (bytes charged for it) and
// max_entries, from fdinfo.
func (t *flowTable) memlock() (memlock, maxEntries uint64, err error) {
	info, err := fdinfo(t.m.FD())
	if err != nil {
		return 0, 0, err
	}
	memlock, err = strconv.ParseUint(info["memlock"], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("fdinfo memlock %q: %w", info["memlock"], err)
	}
	maxEntries, err = strconv.ParseUint(info["max_entries"], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("fdinfo max_entries %q: %w", info["max_entries"], err)
	}
	return memlock, maxEntries, nil
}
