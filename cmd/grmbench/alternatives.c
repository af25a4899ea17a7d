//go:build ignore

/* alternatives.c: the benchmark's side-by-side programs for the data
 * plane's two design choices (docs/dataplane.md). Each program does one
 * thing the steering program does, in two ways:
 *   - selecting a socket through a SOCKHASH keyed by cookie, or through a
 *     REUSEPORT_SOCKARRAY by index;
 *   - finding a flow by its exact 4-tuple in an LRU hash, or in a set of 8
 *     entries of an array picked by the kernel's reuseport hash (with the
 *     sequence-number reads the steering program does).
 * They are measured, never used to steer. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The steering program's key and flow entry, so that the two cannot drift. */
#include "grmwrap.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";


/* The socket each select program picks: cookie and index. */
volatile const __u64 alt_cookie = 0;
volatile const __u32 alt_index = 0;
/* Sets of the array table - 1. */
volatile const __u32 alt_set_mask = 0;

struct alt_value {
	__u64 seen_ns;
	__u32 index;
	__u32 epoch;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} alt_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} alt_sockarray SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct grm_flow_key);
	__type(value, struct alt_value);
} alt_lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct grm_flow);
} alt_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} alt_result SEC(".maps");

/* result folds a value into a map so that the work is not optimized out. */
static __always_inline void result(__u64 v)
{
	__u32 k = 0;
	__u64 *r = bpf_map_lookup_elem(&alt_result, &k);

	if (r)
		*r += v;
}

/* alt_key_of builds the key the steering program builds (IPv4 only). */
static __always_inline int alt_key_of(struct sk_reuseport_md *md, struct grm_flow_key *k)
{
	void *data = md->data, *end = md->data_end;
	__be16 *ports = data;
	__u32 addrs[2];

	if (data + 4 > end)
		return -1;
	k->group = 1;
	k->remote_port = ports[0];
	k->local_port = ports[1];
	if (bpf_skb_load_bytes_relative(md, 12, addrs, sizeof(addrs), BPF_HDR_START_NET))
		return -1;
	k->remote_addr[10] = 0xff;
	k->remote_addr[11] = 0xff;
	__builtin_memcpy(&k->remote_addr[12], &addrs[0], 4);
	k->local_addr[10] = 0xff;
	k->local_addr[11] = 0xff;
	__builtin_memcpy(&k->local_addr[12], &addrs[1], 4);
	return 0;
}

SEC("sk_reuseport")
int alt_select_sockhash(struct sk_reuseport_md *md)
{
	__u64 cookie = alt_cookie;

	result(bpf_sk_select_reuseport(md, &alt_sockhash, &cookie, 0) == 0);
	return SK_PASS;
}

SEC("sk_reuseport")
int alt_select_sockarray(struct sk_reuseport_md *md)
{
	__u32 index = alt_index;

	result(bpf_sk_select_reuseport(md, &alt_sockarray, &index, 0) == 0);
	return SK_PASS;
}

SEC("sk_reuseport")
int alt_flow_lru(struct sk_reuseport_md *md)
{
	struct grm_flow_key k = {};
	struct alt_value *v;

	if (alt_key_of(md, &k))
		return SK_PASS;
	v = bpf_map_lookup_elem(&alt_lru, &k);
	if (v) {
		result(v->index);
	} else {
		struct alt_value nv = {.seen_ns = 1, .index = 1, .epoch = 1};

		bpf_map_update_elem(&alt_lru, &k, &nv, BPF_ANY);
	}
	return SK_PASS;
}

static __always_inline int alt_key_eq(const struct grm_flow *e, const struct grm_flow_key *k)
{
	const __u64 *a = (const __u64 *)&e->key, *b = (const __u64 *)k;

	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4];
}

SEC("sk_reuseport")
int alt_flow_sets(struct sk_reuseport_md *md)
{
	struct grm_flow_key k __attribute__((aligned(8))) = {};
	struct grm_flow *unused = 0;
	__u32 set;

	if (alt_key_of(md, &k))
		return SK_PASS;
	set = md->hash & alt_set_mask;
#pragma unroll
	for (__u32 w = 0; w < GRM_FLOW_WAYS; w++) {
		__u32 i = set * GRM_FLOW_WAYS + w;
		struct grm_flow *e = bpf_map_lookup_elem(&alt_sets, &i);
		__u32 s1, index;

		if (!e)
			return SK_PASS;
		s1 = *(volatile __u32 *)&e->seq;
		if (s1 & 1)
			continue;
		barrier();
		if (e->key.group == 0) {
			unused = e;
			break;
		}
		if (!alt_key_eq(e, &k))
			continue;
		index = e->index;
		barrier();
		if (*(volatile __u32 *)&e->seq != s1)
			continue;
		result(index);
		return SK_PASS;
	}
	if (unused && __sync_val_compare_and_swap(&unused->seq, 0, 1) == 0) {
		__builtin_memcpy(&unused->key, &k, sizeof(k));
		unused->seen_ns = 1;
		unused->index = 1;
		unused->epoch = 1;
		__sync_fetch_and_add(&unused->seq, 1);
	}
	return SK_PASS;
}

/* The noop path (group state, one slot, the selection, the counters) with
 * the group's data in two layouts: the first design's (the group's state
 * in one array, its slots in an array of their own) and grmwrap's (state
 * and first slots in one cache line of an mmapable array, grmwrap.h). */
volatile const __u32 alt_gid = 1;

struct alt_split_group {
	__u64 state;
	__u32 dissector;
	__u32 flow_timeout_sec;
	__u32 bank_gen[GRM_BANKS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__type(key, __u32);
	__type(value, struct alt_split_group);
} alt_split_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS * GRM_BANKS * GRM_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct grm_slot);
} alt_split_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct grm_group);
} alt_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__type(key, __u32);
	__type(value, struct grm_counters);
} alt_counters SEC(".maps");

/* Both layouts' groups select from here (a socket sits in one
 * reuseport array only, so not from alt_sockarray). */
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} alt_noop_sockets SEC(".maps");

static __always_inline int alt_select(struct sk_reuseport_md *md, struct grm_slot *s)
{
	return !s || !s->epoch || bpf_sk_select_reuseport(md, &alt_noop_sockets, &s->index, 0);
}

/* ALT_NOOP is the noop path of grm_reuseport; G is the group's state
 * struct, SLOT(i) a pointer to slot i of the working bank. */
#define ALT_NOOP(G, SLOT)                                              \
	struct grm_counters *cnt = bpf_map_lookup_elem(&alt_counters, &gid); \
	__u32 count, bank, i;                                          \
	__u64 st;                                                      \
	if (!cnt || !(G))                                              \
		return SK_PASS;                                        \
	cnt->rx_processed_total++;                                     \
	st = *(volatile __u64 *)&(G)->state;                           \
	count = st & 0xffff;                                           \
	bank = (st >> 16) & 1;                                         \
	if ((st >> 32) == 0) {                                         \
		cnt->rx_internal_state_error++;                        \
		goto fallback;                                         \
	}                                                              \
	if ((G)->dissector == GRM_DISSECTOR_NOOP)                      \
		cnt->rx_noop_total++;                                  \
	cnt->rx_new_flow_total++;                                      \
	if (count == 0 || count > GRM_MAX_SLOTS) {                     \
		cnt->rx_no_working_socket++;                           \
		goto fallback;                                         \
	}                                                              \
	i = ((__u64)md->hash * count) >> 32;                           \
	if (alt_select(md, SLOT(i))) {                                 \
		cnt->rx_new_flow_working_gen_dispatch_error++;         \
		goto fallback;                                         \
	}                                                              \
	cnt->rx_new_flow_working_gen_dispatch_ok++;                    \
	return SK_PASS;                                                \
fallback:                                                              \
	cnt->rx_fallback_kernel++;                                     \
	return SK_PASS;

SEC("sk_reuseport")
int alt_noop_split(struct sk_reuseport_md *md)
{
	__u32 gid = alt_gid;
	struct alt_split_group *g = bpf_map_lookup_elem(&alt_split_groups, &gid);

#define SPLIT_SLOT(i) ({ __u32 k = (gid * GRM_BANKS + bank) * GRM_MAX_SLOTS + ((i) & (GRM_MAX_SLOTS - 1)); \
			 (struct grm_slot *)bpf_map_lookup_elem(&alt_split_slots, &k); })
	ALT_NOOP(g, SPLIT_SLOT)
}

SEC("sk_reuseport")
int alt_noop_line(struct sk_reuseport_md *md)
{
	__u32 gid = alt_gid;
	struct grm_group *g = bpf_map_lookup_elem(&alt_groups, &gid);
	struct grm_slot s;

#define LINE_SLOT(i) ({ s = g->slots[(i) & (GRM_MAX_SLOTS - 1)][bank & 1]; &s; })
	ALT_NOOP(g, LINE_SLOT)
}
