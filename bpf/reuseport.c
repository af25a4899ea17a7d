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

/* The managed sockets, by cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sockets SEC(".maps");

/* Socket cookie -> group id: user space's record of live sockets (for a
 * restarted supervisor); not read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socket_groups SEC(".maps");

/* (group, generation, slot) -> socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRM_MAX_SOCKETS);
	__type(key, struct grm_slot_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRM_MAX_GROUPS);
	__type(key, __u32);
	__type(value, struct grm_group);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} groups SEC(".maps");

/* The flow table; its size is set at load time (--max-flows). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct grm_flow_key);
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

/* select_working picks slot md->hash % count of the working generation, and
 * the next slot once if that one is empty (a socket just closed; user space
 * repacks). On success *cookie is the chosen socket. */
static __always_inline int select_working(struct sk_reuseport_md *md, __u32 group, __u32 gen,
					  __u32 count, __u64 *cookie)
{
	struct grm_slot_key sk = {.group = group, .gen = gen, .slot = md->hash % count};
	__u64 *c;

	c = bpf_map_lookup_elem(&slots, &sk);
	if (c && bpf_sk_select_reuseport(md, &sockets, c, 0) == 0) {
		*cookie = *c;
		return 0;
	}
	if (count < 2)
		return -1;
	sk.slot = (sk.slot + 1) % count;
	c = bpf_map_lookup_elem(&slots, &sk);
	if (c && bpf_sk_select_reuseport(md, &sockets, c, 0) == 0) {
		*cookie = *c;
		return 0;
	}
	return -1;
}

SEC("sk_reuseport")
int grm_reuseport(struct sk_reuseport_md *md)
{
	struct grm_counters *cnt;
	struct grm_group *g;
	struct grm_flow_key key;
	struct grm_flow *f;
	__u64 cookie, now = 0, gc;
	__u32 gid = group_id, gen, count;

	cnt = bpf_map_lookup_elem(&counters, &gid);
	g = bpf_map_lookup_elem(&groups, &gid);
	if (!cnt || !g)
		return SK_PASS; /* gid out of range: cannot happen, user space checks it */
	cnt->rx_processed_total++;
	gc = *(volatile __u64 *)&g->gen_count;
	gen = gc >> 32;
	count = (__u32)gc;
	if (gen == 0) {
		/* Group state never written: nothing to steer by. */
		cnt->rx_internal_state_error++;
		goto fallback;
	}

	if (g->dissector == GRM_DISSECTOR_NOOP) {
		cnt->rx_noop_total++;
		goto new_flow;
	}

	__builtin_memset(&key, 0, sizeof(key));
	key.group = gid;
	if (flow_key(md, &key)) {
		cnt->rx_packet_too_short_error++;
		goto new_flow;
	}
	cnt->rx_dissected_ok_total++;
	now = bpf_ktime_get_coarse_ns();
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f) {
		cnt->rx_flow_new_unseen++;
	} else if (now - f->seen_ns > (__u64)g->flow_timeout_sec * 1000000000ULL) {
		cnt->rx_flow_new_had_expired++;
	} else {
		long err = bpf_sk_select_reuseport(md, &sockets, &f->cookie, 0);

		if (err == 0) {
			if (now - f->seen_ns > refresh_ns)
				f->seen_ns = now;
			cnt->rx_flow_ok++;
			return SK_PASS;
		}
		/* sk_select_reuseport: EBADFD for a socket of another group of the
		 * same family, EAFNOSUPPORT / EPROTOTYPE across families and
		 * protocols; ENOENT when the socket left the map (closed). */
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
	if (select_working(md, gid, gen, count, &cookie)) {
		cnt->rx_new_flow_working_gen_dispatch_error++;
		goto fallback;
	}
	cnt->rx_new_flow_working_gen_dispatch_ok++;
	if (now) { /* a flow group with a dissected key */
		struct grm_flow nf = {.cookie = cookie, .seen_ns = now, .gen = gen};

		if (bpf_map_update_elem(&flows, &key, &nf, BPF_ANY))
			cnt->rx_flow_create_error++;
	}
	return SK_PASS;

fallback:
	cnt->rx_fallback_kernel++;
	return SK_PASS;
}
