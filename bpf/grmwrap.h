/* grmwrap.h: the contract between the SK_REUSEPORT program and its Go
 * loader. Go types are generated from these structs by bpf2go (-type);
 * never copy them by hand. */
#ifndef GRMWRAP_H
#define GRMWRAP_H

/* Sizes of the maps. MAX_GROUPS bounds the group ids user space hands out
 * (id 0 is reserved for traffic that reached no known group). */
#define GRM_MAX_GROUPS 1024
#define GRM_MAX_SOCKETS 65536

/* How a group decides what a flow is. */
enum grm_dissector {
	GRM_DISSECTOR_FLOW = 0, /* 4-tuple flow table */
	GRM_DISSECTOR_NOOP = 1, /* no flows: every packet to the working generation */
};

/* Per-group state, one element of the groups array, written by user space.
 * gen_count packs (working generation << 32 | its socket count) so that one
 * 8-byte load reads both. */
struct grm_group {
	__u64 gen_count;
	__u32 dissector;
	__u32 flow_timeout_sec; /* a flow idle this long is over */
};

/* A slot of a generation: the key of the slots map, whose value is the
 * socket cookie that sits in the slot. Slots of the working generation are
 * dense, 0..count-1. */
struct grm_slot_key {
	__u32 group;
	__u32 gen;
	__u32 slot;
};

/* A flow: the exact 4-tuple within a group. IPv4 addresses are stored
 * v4-mapped (::ffff:a.b.c.d), so IPv4 traffic on a dual-stack socket and on
 * an IPv4 socket share one layout. Ports in network byte order. */
struct grm_flow_key {
	__u32 group;
	__u16 remote_port;
	__u16 local_port;
	__u8 remote_addr[16];
	__u8 local_addr[16];
};

/* Where a flow goes and when it was last seen (coarse). */
struct grm_flow {
	__u64 cookie;  /* the socket serving the flow */
	__u64 seen_ns; /* bpf_ktime_get_coarse_ns, refreshed at most every GRM_REFRESH_NS */
	__u32 gen;     /* generation of that socket, for per-generation counts */
	__u32 pad;
};

/* Per-CPU counters of one group: every branch of the program counts. The
 * names follow udpgrm's where the meaning is the same. */
struct grm_counters {
	__u64 rx_processed_total;        /* every datagram the program ran for */
	__u64 rx_internal_state_error;   /* no group state for the receiving socket */
	__u64 rx_packet_too_short_error; /* headers could not be read */
	__u64 rx_dissected_ok_total;     /* flow key built */
	__u64 rx_flow_ok;                /* existing flow sent to its socket */
	__u64 rx_flow_socket_gone;       /* existing flow whose socket is gone: new-flow path */
	__u64 rx_flow_wrong_group;       /* existing flow whose socket is in another group */
	__u64 rx_flow_new_unseen;        /* no flow entry */
	__u64 rx_flow_new_had_expired;   /* flow entry older than the flow timeout */
	__u64 rx_new_flow_total;         /* packets taking the new-flow path */
	__u64 rx_new_flow_working_gen_dispatch_ok;
	__u64 rx_new_flow_working_gen_dispatch_error; /* slot empty or socket gone */
	__u64 rx_no_working_socket;      /* the working generation has no socket */
	__u64 rx_flow_create_error;      /* flow table update failed */
	__u64 rx_noop_total;             /* packets of noop groups */
	__u64 rx_fallback_kernel;        /* nothing selected: the kernel's hash decides */
};

#endif
