// Package load is grmwrap's load generator and loss counter, shared by
// cmd/grmload, the acceptance tests and the benchmarks.
//
// A run opens N flows and sends numbered datagrams at a fixed total rate.
// A flow is a 4-tuple: by default one connected UDP socket each; with
// Config.Sockets below N, flows share sockets and differ by their source
// address in 127.0.0.0/8 (IP_PKTINFO), so that 100,000 flows need no
// 100,000 descriptors. Config.Senders spreads the sending over goroutines,
// each owning a share of the flows and keeping to the same schedule; a
// sender that was not run in time moves its schedule on rather than send
// the backlog in one burst (Config.MaxLag), so that the load stays steady
// and the server's receive queue does not overflow because of the load
// generator's own stalls. The
// servers under test answer "<instance id> <payload>"; for every flow the
// run records the datagrams sent, answered and lost, and which instance
// answered each, in order, so that a test can tell whether a flow ever
// moved between instances.
//
// Run is one run; a Session is the same flows kept open between steps
// (send a datagram on every flow, upgrade the server, send again, compare
// who answered each).
//
// Invariants: a datagram is lost when no answer for it arrived by the end
// of the grace period; an answer is counted once per sequence number
// (duplicates are counted apart); an answer that reaches a flow that did
// not send its number is stray, never answered; the run stops by itself
// after its duration plus the grace period.
package load
