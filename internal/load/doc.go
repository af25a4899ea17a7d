// Package load is grmwrap's load generator and loss counter, shared by
// cmd/grmload, the acceptance tests and the benchmarks.
//
// A run opens N flows (one connected UDP socket each, so one 4-tuple each)
// and sends numbered datagrams at a fixed total rate. The servers under test
// answer "<instance id> <payload>"; for every flow the run records the
// datagrams sent, answered and lost, and which instance answered each, in
// order, so that a test can tell whether a flow ever moved between
// instances.
//
// Invariants: a datagram is lost when no answer for it arrived by the end
// of the grace period; an answer is counted once per sequence number
// (duplicates are counted apart); the run stops by itself after its
// duration plus the grace period.
package load
