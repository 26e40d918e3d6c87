// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * xylem_redirect: Xylem's XDP program for pod-facing veths.
 *
 * It makes one decision per frame: hand it to the AF_XDP socket registered
 * for (ingress ifindex, rx queue), or XDP_PASS it to the kernel. It never
 * drops: every doubtful case (unknown interface, malformed frame, no socket)
 * fails open to the kernel stack.
 *
 * Maps (the Rust loader in ../src/ writes if_config, xsk_slots and xsks):
 *   xsks       XSKMAP, slot -> AF_XDP socket. Indexed by a slot, not by the
 *              rx queue: every pod veth receives on queue 0.
 *   xsk_slots  (ifindex, queue) -> slot.
 *   if_config  ifindex -> flags. No entry: not pod-facing, always XDP_PASS.
 *   counters   per-CPU u64 counters, indices below.
 *
 * Build with ./build.sh only (reproducible flags); commit the object.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_ENTRIES 1024

/* if_config flags */
#define REDIRECT_IPV4 1u
#define REDIRECT_IPV6 2u
#define REDIRECT_ARP 4u

/*
 * counters indices. Keep in sync with src/lib.rs (counter module).
 * Frames on an interface with an if_config entry land in exactly one of
 * REDIRECTED, PASSED, ERRORS. PASSED_NO_SOCKET is a subset of PASSED.
 * UNCONFIGURED counts frames on interfaces without if_config (not in PASSED).
 */
#define CTR_REDIRECTED 0       /* handed to an AF_XDP socket */
#define CTR_PASSED 1           /* given to the kernel: ethertype not selected,
				* no slot, or the slot holds no socket */
#define CTR_ERRORS 2           /* malformed/short frame (then XDP_PASS) */
#define CTR_PASSED_NO_SOCKET 3 /* no slot, or the slot holds no socket */
#define CTR_UNCONFIGURED 4     /* no if_config entry: not pod-facing */
#define CTR_MAX 5

struct xsk_slot_key {
	__u32 ifindex;
	__u32 queue;
};

struct if_config_value {
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAX_ENTRIES);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct xsk_slot_key);
	__type(value, __u32);
	__uint(max_entries, MAX_ENTRIES);
} xsk_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct if_config_value);
	__uint(max_entries, MAX_ENTRIES);
} if_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CTR_MAX);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
}

SEC("xdp")
int xylem_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct if_config_value *cfg;
	struct xsk_slot_key key;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 want, *slot;
	__u16 proto;
	long act;

	cfg = bpf_map_lookup_elem(&if_config, &ifindex);
	if (!cfg) {
		count(CTR_UNCONFIGURED); /* not pod-facing */
		return XDP_PASS;
	}

	if ((void *)(eth + 1) > data_end) {
		count(CTR_ERRORS);
		return XDP_PASS;
	}

	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP))
		want = REDIRECT_IPV4;
	else if (proto == bpf_htons(ETH_P_IPV6))
		want = REDIRECT_IPV6;
	else if (proto == bpf_htons(ETH_P_ARP))
		want = REDIRECT_ARP;
	else
		want = 0;

	if (!(cfg->flags & want)) {
		count(CTR_PASSED);
		return XDP_PASS;
	}

	key.ifindex = ifindex;
	key.queue = ctx->rx_queue_index;
	slot = bpf_map_lookup_elem(&xsk_slots, &key);
	if (!slot) {
		/* fail open: no socket for this queue */
		count(CTR_PASSED);
		count(CTR_PASSED_NO_SOCKET);
		return XDP_PASS;
	}

	/* XDP_PASS is the fallback when xsks[slot] holds no socket. */
	act = bpf_redirect_map(&xsks, *slot, XDP_PASS);
	if (act == XDP_REDIRECT) {
		count(CTR_REDIRECTED);
	} else {
		count(CTR_PASSED);
		count(CTR_PASSED_NO_SOCKET);
	}
	return act;
}

char _license[] SEC("license") = "Dual BSD/GPL";
