#!/bin/sh
# Creates the node's host port for xylem-agent: a veth pair in the node's network namespace,
# HOST_IF for the node's own stack (the host port's address, the MAC the agent's configuration
# names) and HOST_DP_IF for the agent, which attaches XDP to it. The node then reaches its pods
# through the dataplane: the pod CIDR is routed via the gateway over HOST_IF. It is what
# `xylem lab up` does in its node namespace (control/lab/src/up.rs, make_host_port), here in
# the node's own namespace; the agent creates no interface itself.
#
# Run by the DaemonSet's host-port init container (docker/k8s/40-daemonset.yaml) before the
# agent starts, with CAP_NET_ADMIN in the node's network namespace. Idempotent: a pod restart
# finds the pair made and only re-applies the addresses and routes. The values come from the
# environment and must be those of the agent's configuration (the test
# control/cni/tests/manifests.rs checks that the manifests agree):
#   HOST_IP     the host port's address (ports[kind=host].ip), e.g. 10.200.0.254
#   HOST_MAC    HOST_IF's MAC (ports[kind=host].mac)
#   GATEWAY_IP  the pods' gateway (gateway.ip)
#   POD_CIDR    the node's pod CIDR (pod_cidr)
#   QUEUES      queues of each end: one per worker (the length of workers.cores)
#   HOST_IF, HOST_DP_IF   default xyhost and xyhostdp (ports[kind=host].ifname is HOST_DP_IF)
#   SERVICE_CIDR optional: also routed through the dataplane, for a node without kube-proxy
set -eu

HOST_IF=${HOST_IF:-xyhost}
HOST_DP_IF=${HOST_DP_IF:-xyhostdp}
for var in HOST_IP HOST_MAC GATEWAY_IP POD_CIDR QUEUES; do
  eval "val=\${$var:-}"
  if [ -z "$val" ]; then
    echo "host-port: $var is not set: give it in the init container's env, as the agent's configuration has it" >&2
    exit 2
  fi
done

if ip link show dev "$HOST_IF" >/dev/null 2>&1; then
  mac=$(ip -br link show dev "$HOST_IF" | awk '{print $3}')
  if [ "$mac" != "$HOST_MAC" ]; then
    echo "host-port: $HOST_IF exists with MAC $mac, not $HOST_MAC: it is not the host port this configuration names; delete it (ip link del $HOST_IF) or fix HOST_MAC" >&2
    exit 1
  fi
  echo "host-port: $HOST_IF/$HOST_DP_IF exist; re-applying the address and routes"
else
  ip link add "$HOST_IF" numtxqueues "$QUEUES" numrxqueues "$QUEUES" address "$HOST_MAC" \
    type veth peer name "$HOST_DP_IF" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
  # The agent's end is closed to the node's stack before it goes up, as a pod's port is: no
  # IPv6 link-local address, no ARP, no IPv4 address. Without the agent nothing answers ARP for
  # the gateway on HOST_IF, so the node sends its pods nothing around the dataplane. (The lab
  # also sets rp_filter and forwarding on the port and adds an iptables raw drop; a container
  # that is not privileged cannot write /proc/sys, and those would only matter for frames the
  # node cannot send here without the gateway's ARP answer.)
  ip link set dev "$HOST_DP_IF" addrgenmode none
  ip link set dev "$HOST_DP_IF" arp off
  # AF_XDP forwards bytes, not socket buffers: the node's end computes its checksums itself.
  ethtool -K "$HOST_IF" tx off >/dev/null
  echo "host-port: created $HOST_IF ($HOST_MAC) and $HOST_DP_IF, $QUEUES queues each"
fi

ip addr replace "$HOST_IP/32" dev "$HOST_IF"
ip link set dev "$HOST_DP_IF" up
ip link set dev "$HOST_IF" up
ip route replace "$GATEWAY_IP/32" dev "$HOST_IF" scope link
ip route replace "$POD_CIDR" via "$GATEWAY_IP" dev "$HOST_IF" src "$HOST_IP"
if [ -n "${SERVICE_CIDR:-}" ]; then
  ip route replace "$SERVICE_CIDR" via "$GATEWAY_IP" dev "$HOST_IF" src "$HOST_IP"
fi
echo "host-port: $POD_CIDR via $GATEWAY_IP on $HOST_IF (src $HOST_IP)"
