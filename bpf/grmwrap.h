/* grmwrap.h: the contract between the SK_REUSEPORT program and its Go
 * loader. Go types are generated from these structs by bpf2go (-type);
 * never copy them by hand. */
#ifndef GRMWRAP_H
#define GRMWRAP_H

/* Sizes of the maps. MAX_GROUPS bounds the group ids user space hands out
 * (id 0 is reserved for traffic that reached no known group). */
#define GRM_MAX_GROUPS 1024
#define GRM_MAX_SOCKETS 65536
/* Sockets of one generation in one group (the slots of a bank). */
#define GRM_MAX_SLOTS 256
/* Each group has two banks of slots: the working generation's, and one
 * filled ahead of a flip. */
#define GRM_BANKS 2
/* Entries per set of the flow table. */
#define GRM_FLOW_WAYS 8
/* A new flow takes its first set while that has fewer used ways than
 * this; after, the emptier of its two sets (lookups then check both). */
#define GRM_FLOW_FIRST_SET 6

/* How a group decides what a flow is. */
enum grm_dissector {
	GRM_DISSECTOR_FLOW = 0, /* 4-tuple flow table */
	GRM_DISSECTOR_NOOP = 1, /* no flows: every packet to the working generation */
};

/* A slot names a socket by its index in the sockets array and the epoch
 * of that index; epoch 0 is an empty slot. */
struct grm_slot {
	__u32 index;
	__u32 epoch;
};

/* A group: one element of the groups array, written by user space in
 * place (the array is mmapable) with single aligned stores. state packs
 * (working generation << 32 | bank << 16 | socket count) so that one
 * 8-byte load reads all three: the bank holds the working generation's
 * slots, and its first count slots are filled. Slot i of bank b is
 * slots[i][b], so that the state, the dissector, the flow timeout and the
 * first three slots of both banks share the element's first cache line:
 * the elements of an mmapable array start page-aligned and this struct is
 * a multiple of 64 bytes long. */
struct grm_group {
	__u64 state;
	__u32 dissector;
	__u32 flow_timeout_sec;      /* a flow idle this long is over */
	struct grm_slot slots[GRM_MAX_SLOTS][GRM_BANKS];
	__u32 bank_gen[GRM_BANKS];   /* generation in each bank (0: none), for user space */
	__u32 pad[10];
};

/* User space's record of a live socket (the socket_groups map, by cookie),
 * for a restarted supervisor. */
struct grm_socket_ref {
	__u32 group;
	__u32 index;
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

/* One entry of the flow table: 64 bytes, one cache line. The table is an
 * array of sets of GRM_FLOW_WAYS entries; a flow lives in one of two sets
 * chosen by the kernel's reuseport hash of its 4-tuple, and the ways of a
 * set fill in order (an entry is reused, never emptied). seq is odd while
 * the entry is being written: readers skip it, writers claim it with a
 * compare-and-swap. The socket is (index, epoch): an index is reused only
 * under a new epoch, so a flow of a closed socket never follows its index
 * to another socket. */
struct grm_flow {
	__u32 seq;
	__u32 timeout_sec;         /* the group's flow timeout when written */
	struct grm_flow_key key;   /* key.group 0: never used */
	__u64 seen_ns;             /* bpf_ktime_get_coarse_ns, refreshed at most every refresh_ns */
	__u32 index;               /* the serving socket's index in the sockets array */
	__u32 epoch;               /* ... and that index's epoch when the flow was written */
};

/* Per-CPU counters of one group: every branch of the program counts. The
 * names follow udpgrm's where the meaning is the same. */
struct grm_counters {
	/* The counters of the common paths come first, within 56 bytes: one
	 * or two cache lines (per-CPU elements are only 8-byte aligned). */
	__u64 rx_processed_total;        /* every datagram the program ran for */
	__u64 rx_flow_ok;                /* existing flow sent to its socket */
	__u64 rx_dissected_ok_total;     /* flow key built */
	__u64 rx_new_flow_total;         /* packets taking the new-flow path */
	__u64 rx_new_flow_working_gen_dispatch_ok;
	__u64 rx_noop_total;             /* packets of noop groups */
	__u64 rx_flow_new_unseen;        /* no flow entry */
	__u64 rx_flow_new_had_expired;   /* flow entry older than the flow timeout */
	__u64 rx_internal_state_error;   /* no group state for the receiving socket */
	__u64 rx_packet_too_short_error; /* headers could not be read */
	__u64 rx_flow_socket_gone;       /* existing flow whose socket is gone: new-flow path */
	__u64 rx_flow_wrong_group;       /* existing flow whose socket is in another group */
	__u64 rx_new_flow_working_gen_dispatch_error; /* slot empty or socket gone */
	__u64 rx_no_working_socket;      /* the working generation has no socket */
	__u64 rx_flow_create_error;      /* flow entry not written: its candidates were being written */
	__u64 rx_flow_evicted;           /* a live flow's entry taken: both its sets were full */
	__u64 rx_fallback_kernel;        /* nothing selected: the kernel's hash decides */
};

#endif
