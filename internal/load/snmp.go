package load

import (
	"os"
	"strconv"
	"strings"
)

// UDPCounters reads the Udp counters of /proc/net/snmp (InErrors,
// RcvbufErrors, NoPorts, ...) of the caller's network namespace: where the
// kernel says datagrams were dropped. It returns nil when the file cannot
// be read.
func UDPCounters() map[string]int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return nil
	}
	var names []string
	out := make(map[string]int64)
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Udp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest)
			continue
		}
		for i, v := range strings.Fields(rest) {
			if i < len(names) {
				out[names[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out
}
