package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/grmwrap/grmwrap/bpf"
)

// flowKey and flowValue have the layout of grm_flow_key and grm_flow in
// bpf/grmwrap.h. Package bpf keeps its generated types to itself, so the
// benchmark states the layout again and checks it against the loaded map
// twice: the sizes must match, and a flow created by the program must be
// found under the key computed here (see checkFlowKey).
type flowKey struct {
	Group      uint32
	RemotePort [2]byte // network byte order
	LocalPort  [2]byte
	RemoteAddr [16]byte // IPv4 v4-mapped
	LocalAddr  [16]byte
}

type flowValue struct {
	Cookie uint64
	SeenNs uint64
	Gen    uint32
	Pad    uint32
}

// keyOf is the flow key of synthetic client i talking to 127.0.0.1:port in
// group gid.
func keyOf(gid uint32, i int, port uint16) flowKey {
	ip, sport := tuple(i)
	k := flowKey{Group: gid}
	binary.BigEndian.PutUint16(k.RemotePort[:], sport)
	binary.BigEndian.PutUint16(k.LocalPort[:], port)
	k.RemoteAddr[10], k.RemoteAddr[11] = 0xff, 0xff
	copy(k.RemoteAddr[12:], ip[:])
	k.LocalAddr[10], k.LocalAddr[11] = 0xff, 0xff
	copy(k.LocalAddr[12:], serverIP[:])
	return k
}

// flowTable is a second handle on the program's flow table, found through
// the program's map ids.
type flowTable struct {
	m *ebpf.Map
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
		mi, err := m.Info()
		if err == nil && mi.Name == "flows" {
			if m.KeySize() != uint32(unsafe.Sizeof(flowKey{})) || m.ValueSize() != uint32(unsafe.Sizeof(flowValue{})) {
				m.Close()
				return nil, fmt.Errorf("flow table layout changed: key %d value %d bytes, grmbench expects %d and %d",
					m.KeySize(), m.ValueSize(), unsafe.Sizeof(flowKey{}), unsafe.Sizeof(flowValue{}))
			}
			return &flowTable{m: m}, nil
		}
		m.Close()
	}
	return nil, errors.New("the program has no map named flows")
}

func (t *flowTable) close() { t.m.Close() }

func (t *flowTable) lookup(k flowKey) (flowValue, bool) {
	var v flowValue
	return v, t.m.Lookup(&k, &v) == nil
}

// checkFlowKey fails unless the program created a flow under the key the
// benchmark computes for client i: the layout and byte order agree.
func (t *flowTable) checkFlowKey(gid uint32, i int, port uint16) error {
	if _, ok := t.lookup(keyOf(gid, i, port)); !ok {
		return fmt.Errorf("no flow entry under the computed key of client %d: grm_flow_key's layout differs from grmbench's", i)
	}
	return nil
}

// deleteRange removes the flows of clients [from, to).
func (t *flowTable) deleteRange(gid uint32, from, to int, port uint16) error {
	const chunk = 4096
	keys := make([]flowKey, 0, chunk)
	for i := from; i < to; i += chunk {
		keys = keys[:0]
		for j := i; j < min(i+chunk, to); j++ {
			keys = append(keys, keyOf(gid, j, port))
		}
		// Keys missing are no error: the batch stops at the first one,
		// so delete the rest one by one.
		n, err := t.m.BatchDelete(keys, nil)
		if err != nil {
			for _, k := range keys[n:] {
				if err := t.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("delete flow: %w", err)
				}
			}
		}
	}
	return nil
}

// count returns how many entries the table holds (batch lookups).
func (t *flowTable) count() (int, error) {
	const chunk = 8192
	keys := make([]flowKey, chunk)
	vals := make([]flowValue, chunk)
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := t.m.BatchLookup(&cursor, keys, vals, nil)
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("count flows: %w", err)
		}
	}
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
