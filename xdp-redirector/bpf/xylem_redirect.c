// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * xylem_redirect: Xylem's XDP program for pod-facing veths.
 *
 * It makes one decision per frame: hand it to the AF_XDP socket registered
 * for (ingress ifindex, rx queue), or drop it. It reads no byte of the frame:
 * every frame goes to the dataplane whatever its ethertype (VLAN-tagged,
 * IPv6, LLDP, too short to be Ethernet...), and the dataplane drops and
 * counts what it does not handle. Passing a frame to the kernel would let a
 * pod reach the node's own stack around the dataplane (a VLAN 0 tag, for one,
 * is stripped by the kernel and the frame delivered as untagged), so no frame
 * is ever passed: a queue without a socket (agent starting, port being
 * removed) drops.
 *
 * The loader attaches the program only to pod-facing interfaces (and the
 * host port's dataplane end), so being attached is what makes an interface
 * pod-facing.
 *
 * Maps (the Rust loader in ../src/ writes xsk_slots and xsks):
 *   xsks       XSKMAP, slot -> AF_XDP socket. Indexed by a slot, not by the
 *              rx queue: one program serves every port, whose queues overlap.
 *   xsk_slots  (ifindex, queue) -> slot.
 *   counters   per-CPU u64 counters, indices below.
 *
 * Build with ./build.sh only (reproducible flags); commit the object.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_ENTRIES 1024

/*
 * counters indices. Keep in sync with src/lib.rs (counter module).
 * Every frame lands in exactly one of them.
 */
#define CTR_REDIRECTED 0 /* handed to an AF_XDP socket */
#define CTR_NO_SOCKET 1  /* dropped: no slot, or the slot holds no socket */
#define CTR_MAX 2

struct xsk_slot_key {
	__u32 ifindex;
	__u32 queue;
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
	struct xsk_slot_key key;
	__u32 *slot;
	long act;

	key.ifindex = ctx->ingress_ifindex;
	key.queue = ctx->rx_queue_index;
	slot = bpf_map_lookup_elem(&xsk_slots, &key);
	if (!slot) {
		count(CTR_NO_SOCKET);
		return XDP_DROP;
	}

	/* XDP_DROP is the fallback when xsks[slot] holds no socket. */
	act = bpf_redirect_map(&xsks, *slot, XDP_DROP);
	if (act == XDP_REDIRECT)
		count(CTR_REDIRECTED);
	else
		count(CTR_NO_SOCKET);
	return act;
}

char _license[] SEC("license") = "Dual BSD/GPL";
