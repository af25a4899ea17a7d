//go:build ignore

/* reuseport.c: grmwrap's SK_REUSEPORT program. For every datagram to a
 * managed address it picks the socket: an existing flow's own socket, or a
 * socket of the working generation for a new flow. Bounded: no loops, one
 * retry, a few map lookups. It never drops: when nothing can be selected it
 * returns SK_PASS without a selection (the kernel's hash decides) and
 * counts it. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "grmwrap.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A flow's last-seen time is written at most this often (ns). */
volatile const __u64 refresh_ns = 1000000000ULL;

/* The group this copy of the program serves: every group gets its own
 * copy, loaded with its id, so a packet needs no lookup to find its group. */
volatile const __u32 group_id = 0;

/* Sets of the flow table - 1, and 32 - log2(sets): a flow's first set is
 * hash & mask, its second the top bits of hash * 2654435761. */
volatile const __u32 flow_set_mask = 0;
volatile const __u32 flow_set_shift = 32;

#define READ_ONCE32(x) (*(volatile __u32 *)&(x))
#define WRITE_ONCE32(x, v) (*(volatile __u32 *)&(x) = (v))

/* The managed sockets, by index (handed out by user space). A socket's
 * index is stable while it lives, so flows can name it; the kernel empties
 * the element when the socket closes. Unlike a sockmap, this array leaves
 * the socket's own receive path untouched. */
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sockets SEC(".maps");

/* The epoch of every socket index: bumped when the index is handed out
 * and when it is freed. A flow records it and is only followed while it
 * still matches. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} epochs SEC(".maps");

/* When each socket index last had a flow written or refreshed (the
 * latest last-seen time of its flows): a drain asks it instead of walking
 * the flow table. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_seen SEC(".maps");

/* Socket cookie -> (group, index): user space's record of live sockets
 * (for a restarted supervisor); not read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct grm_socket_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socket_groups SEC(".maps");

/* The groups, by id: state, dissector, flow timeout and both banks of
 * slots (grmwrap.h). Mmapable so that elements start page-aligned and user
 * space writes fields in place. */
_Static_assert(sizeof(struct grm_group) % 64 == 0, "a group must be whole cache lines");
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct grm_group);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} groups SEC(".maps");

/* The flow table: sets of GRM_FLOW_WAYS entries. Its size (a power of two)
 * is set at load time from --max-flows, with flow_set_mask and
 * flow_set_shift to match. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_MMAPABLE); /* user space reads it in place; entries start page-aligned */
	__type(key, __u32);
	__type(value, struct grm_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__type(key, __u32);
	__type(value, struct grm_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* Keep the dissector enum in BTF for bpf2go -type. */
const enum grm_dissector grm_dissector_unused __attribute__((unused));

/* flow_key fills k from the packet: ports from the UDP header at md->data,
 * addresses from the network header. Returns 0 on success. */
static __always_inline int flow_key(struct sk_reuseport_md *md, struct grm_flow_key *k)
{
	void *data = md->data, *end = md->data_end;
	__be16 *ports = data;

	if (data + 4 > end)
		return -1;
	k->remote_port = ports[0];
	k->local_port = ports[1];
	if (md->eth_protocol == bpf_htons(ETH_P_IP)) {
		/* saddr at 12, daddr at 16 of the IPv4 header. */
		__u32 addrs[2];

		if (bpf_skb_load_bytes_relative(md, 12, addrs, sizeof(addrs), BPF_HDR_START_NET))
			return -1;
		__builtin_memset(k->remote_addr, 0, 10);
		k->remote_addr[10] = 0xff;
		k->remote_addr[11] = 0xff;
		__builtin_memcpy(&k->remote_addr[12], &addrs[0], 4);
		__builtin_memset(k->local_addr, 0, 10);
		k->local_addr[10] = 0xff;
		k->local_addr[11] = 0xff;
		__builtin_memcpy(&k->local_addr[12], &addrs[1], 4);
		return 0;
	}
	if (md->eth_protocol == bpf_htons(ETH_P_IPV6)) {
		/* saddr at 8, daddr at 24 of the IPv6 header, adjacent. */
		if (bpf_skb_load_bytes_relative(md, 8, k->remote_addr, 32, BPF_HDR_START_NET))
			return -1;
		return 0;
	}
	return -1;
}

/* try_slot selects the socket in slot i of bank b of group g. */
static __always_inline int try_slot(struct sk_reuseport_md *md, const struct grm_group *g, __u32 b,
				    __u32 i, struct grm_slot *out)
{
	*out = g->slots[i & (GRM_MAX_SLOTS - 1)][b & 1];
	if (!out->epoch)
		return -1;
	return bpf_sk_select_reuseport(md, &sockets, &out->index, 0) ? -1 : 0;
}

/* select_working picks slot (md->hash * count) >> 32 of bank b (the hash
 * scaled to 0..count-1 without a division), and the next slot once if
 * that one is empty or its socket closed (user space repacks). count is
 * 1..GRM_MAX_SLOTS (the caller checks). On success *out is the chosen
 * slot. Inlined (it was a global function): one call
 * fewer per datagram for about 2,000 more instructions verified, once per
 * group. */
static __always_inline int select_working(struct sk_reuseport_md *md, const struct grm_group *g,
					     __u32 b, __u32 count, struct grm_slot *out)
{
	__u32 i = ((__u64)md->hash * count) >> 32;

	if (try_slot(md, g, b, i, out) == 0)
		return 0;
	if (count < 2)
		return -1;
	return try_slot(md, g, b, i + 1 < count ? i + 1 : 0, out);
}

/* No way of a set, and no entry of the table. */
#define NO_WAY 0xff
#define NO_ENTRY 0xffffffff

/* Where a hit was read: a consistent copy of its socket and time. */
struct flow_snap {
	__u64 seen_ns;
	__u32 index;
	__u32 epoch;
};

/* A set of the flow table being scanned for a key, the context of the
 * scan_way loop body. Ways, not pointers, are kept. */
struct set_scan {
	struct grm_flow_key key;
	struct flow_snap snap; /* of the hit */
	__u64 now;
	__u64 oldest_seen;
	__u32 set;
	__u32 hit;     /* way of the key's entry */
	__u32 expired; /* first way whose flow is over */
	__u32 oldest;  /* least recently seen live way */
	__u32 used;    /* ways before the first never-used one (the way to fill) */
};

static __always_inline int key_eq(const struct grm_flow *e, const struct grm_flow_key *k)
{
	const __u64 *a = (const __u64 *)&e->key, *b = (const __u64 *)k;

	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4];
}

/* scan_way is the body of a set's scan, for way w: it returns 1 (stop) at
 * a hit or at the first never-used entry (ways fill in order). Entries
 * being written are skipped. Expiry of other entries is judged by their
 * own timeout. A callback of bpf_loop, so that the verifier walks it once
 * rather than once per way and path. */
static long scan_way(__u64 w, void *ctx)
{
	struct set_scan *sc = ctx;
	__u32 i = sc->set * GRM_FLOW_WAYS + (__u32)w;
	struct grm_flow *e = bpf_map_lookup_elem(&flows, &i);
	__u32 s1;
	__u64 seen;

	if (!e)
		return 1;
	s1 = READ_ONCE32(e->seq);
	if (s1 & 1)
		return 0;
	barrier();
	if (e->key.group == 0) {
		sc->used = w;
		return 1;
	}
	seen = e->seen_ns;
	if (key_eq(e, &sc->key)) {
		sc->snap.seen_ns = seen;
		sc->snap.index = e->index;
		sc->snap.epoch = e->epoch;
		barrier();
		if (READ_ONCE32(e->seq) != s1)
			return 0; /* rewritten while read */
		sc->hit = w;
		return 1;
	}
	if (sc->now - seen > (__u64)e->timeout_sec * 1000000000ULL) {
		if (sc->expired == NO_WAY)
			sc->expired = w;
	} else if (seen < sc->oldest_seen) {
		sc->oldest_seen = seen;
		sc->oldest = w;
	}
	return 0;
}

/* scan_set scans set for sc->key. */
static __always_inline void scan_set(__u32 set, struct set_scan *sc)
{
	sc->set = set;
	sc->hit = sc->expired = sc->oldest = NO_WAY;
	sc->oldest_seen = ~0ULL;
	sc->used = GRM_FLOW_WAYS;
	bpf_loop(GRM_FLOW_WAYS, scan_way, sc, 0);
}

/* Set in flow_target's result when the entry it picked holds a live flow. */
#define EVICT 0x80000000U

/* flow_target picks the entry a new flow is written to (NO_ENTRY: none):
 * in its first set while that has fewer than GRM_FLOW_FIRST_SET used ways;
 * else one whose flow is over, a never-used one in the emptier set, the
 * least recently seen (an eviction, flagged with EVICT). sb is read only
 * when sa has GRM_FLOW_FIRST_SET used ways or more. A global function: the
 * verifier checks it once, apart from its callers' paths. */
__attribute__((noinline)) __u32 flow_target(const struct set_scan *sa, const struct set_scan *sb)
{
	if (!sa || !sb)
		return NO_ENTRY;
	if (sa->used < GRM_FLOW_FIRST_SET)
		return sa->set * GRM_FLOW_WAYS + (sa->expired != NO_WAY ? sa->expired : sa->used);
	if (sa->expired != NO_WAY)
		return sa->set * GRM_FLOW_WAYS + sa->expired;
	if (sb->expired != NO_WAY)
		return sb->set * GRM_FLOW_WAYS + sb->expired;
	if (sa->used < GRM_FLOW_WAYS && sa->used <= sb->used)
		return sa->set * GRM_FLOW_WAYS + sa->used;
	if (sb->used < GRM_FLOW_WAYS)
		return sb->set * GRM_FLOW_WAYS + sb->used;
	if (sa->oldest != NO_WAY && sa->oldest_seen <= sb->oldest_seen)
		return (sa->set * GRM_FLOW_WAYS + sa->oldest) | EVICT;
	if (sb->oldest != NO_WAY)
		return (sb->set * GRM_FLOW_WAYS + sb->oldest) | EVICT;
	return NO_ENTRY;
}

/* mark_seen records that socket index idx served a flow at now. The
 * element is shared by every CPU that serves the socket, so it is written
 * only when it lags now by half a refresh interval or more: it trails its
 * flows' last-seen times by less than that (user space allows for it). */
static __always_inline void mark_seen(__u32 idx, __u64 now)
{
	__u64 *t = bpf_map_lookup_elem(&sock_seen, &idx);

	if (t && now - *t >= refresh_ns / 2 && *t < now)
		*t = now;
}

/* flow_write claims entry e and writes the flow into it. It fails when
 * another CPU is writing e. */
static __always_inline int flow_write(struct grm_flow *e, const struct grm_flow_key *k, __u64 now,
				      __u32 timeout, const struct grm_slot *sel)
{
	__u32 s = READ_ONCE32(e->seq);

	if (s & 1)
		return -1;
	if (__sync_val_compare_and_swap(&e->seq, s, s + 1) != s)
		return -1;
	__builtin_memcpy(&e->key, k, sizeof(*k));
	e->timeout_sec = timeout;
	e->seen_ns = now;
	e->index = sel->index;
	e->epoch = sel->epoch;
	/* Only the claimer writes seq while it is odd: a plain store ends the
	 * write (stores are not reordered with earlier stores on x86, and
	 * barrier() keeps the compiler from doing so). */
	barrier();
	WRITE_ONCE32(e->seq, s + 2);
	return 0;
}

SEC("sk_reuseport")
int grm_reuseport(struct sk_reuseport_md *md)
{
	struct grm_counters *cnt;
	struct grm_group *g;
	struct set_scan sa __attribute__((aligned(8)));
	struct set_scan sb __attribute__((aligned(8)));
	struct flow_snap snap;
	__u32 hit = NO_ENTRY;
	struct grm_slot sel;
	__u64 now = 0, st;
	__u32 gid = group_id, gen, count, bank, set_b;

	cnt = bpf_map_lookup_elem(&counters, &gid);
	g = bpf_map_lookup_elem(&groups, &gid);
	if (!cnt || !g)
		return SK_PASS; /* gid out of range: cannot happen, user space checks it */
	cnt->rx_processed_total++;
	st = *(volatile __u64 *)&g->state;
	gen = st >> 32;
	count = st & 0xffff;
	bank = (st >> 16) & 1;
	if (gen == 0) {
		/* Group state never written: nothing to steer by. */
		cnt->rx_internal_state_error++;
		goto fallback;
	}

	if (g->dissector == GRM_DISSECTOR_NOOP) {
		cnt->rx_noop_total++;
		goto new_flow;
	}

	sa.key.group = gid;
	if (flow_key(md, &sa.key)) {
		cnt->rx_packet_too_short_error++;
		goto new_flow;
	}
	cnt->rx_dissected_ok_total++;
	now = bpf_ktime_get_coarse_ns();
	sa.now = now;
	scan_set(md->hash & flow_set_mask, &sa);
	if (sa.hit != NO_WAY) {
		hit = sa.set * GRM_FLOW_WAYS + sa.hit;
		snap = sa.snap;
	} else if (sa.used >= GRM_FLOW_FIRST_SET) {
		/* A flow goes to its second set only once its first has
		 * GRM_FLOW_FIRST_SET used ways, and ways never empty: below
		 * that, the second set cannot hold it. */
		set_b = ((md->hash * 2654435761U) >> flow_set_shift) & flow_set_mask;
		if (set_b == sa.set)
			set_b ^= 1;
		sb.key = sa.key;
		sb.now = now;
		scan_set(set_b, &sb);
		if (sb.hit != NO_WAY) {
			hit = set_b * GRM_FLOW_WAYS + sb.hit;
			snap = sb.snap;
		}
	}
	if (hit == NO_ENTRY) {
		cnt->rx_flow_new_unseen++;
	} else if (now - snap.seen_ns > (__u64)g->flow_timeout_sec * 1000000000ULL) {
		cnt->rx_flow_new_had_expired++;
	} else {
		__u32 idx = snap.index;
		__u32 *ep = bpf_map_lookup_elem(&epochs, &idx);
		long err = -2; /* ENOENT: the index changed hands */

		if (ep && *ep == snap.epoch)
			err = bpf_sk_select_reuseport(md, &sockets, &idx, 0);
		if (err == 0) {
			if (now - snap.seen_ns > refresh_ns) {
				struct grm_flow *e = bpf_map_lookup_elem(&flows, &hit);

				if (e)
					e->seen_ns = now;
				mark_seen(idx, now);
			}
			cnt->rx_flow_ok++;
			return SK_PASS;
		}
		/* sk_select_reuseport: EBADFD for a socket of another group of the
		 * same family, EAFNOSUPPORT / EPROTOTYPE across families and
		 * protocols; ENOENT when the socket left the array (closed). */
		if (err == -77 || err == -97 || err == -91)
			cnt->rx_flow_wrong_group++;
		else
			cnt->rx_flow_socket_gone++;
	}

new_flow:
	cnt->rx_new_flow_total++;
	if (count == 0) {
		cnt->rx_no_working_socket++;
		goto fallback;
	}
	if (count > GRM_MAX_SLOTS)
		count = GRM_MAX_SLOTS; /* user space never writes more */
	if (select_working(md, g, bank, count, &sel)) {
		cnt->rx_new_flow_working_gen_dispatch_error++;
		goto fallback;
	}
	cnt->rx_new_flow_working_gen_dispatch_ok++;
	if (now) { /* a flow group with a dissected key */
		__u32 t = hit != NO_ENTRY ? hit : flow_target(&sa, &sb);
		__u32 k = t & ~EVICT;
		struct grm_flow *e = bpf_map_lookup_elem(&flows, &k);

		if (t != NO_ENTRY && (t & EVICT) && e)
			cnt->rx_flow_evicted++;
		if (!e || flow_write(e, &sa.key, now, g->flow_timeout_sec, &sel))
			cnt->rx_flow_create_error++;
		else
			mark_seen(sel.index, now);
	}
	return SK_PASS;

fallback:
	cnt->rx_fallback_kernel++;
	return SK_PASS;
}
