set -e
N=xylem-replaycap-node1; A=xylem-replaycap-pod-pod-a; B=xylem-replaycap-pod-pod-b; C=xylem-replaycap-pod-pod-c
for p in $A $B $C; do ip netns exec $p ip neigh replace 10.200.0.1 lladdr 0e:78:79:6c:00:01 dev eth0 nud permanent; done
ip netns exec $A tcpdump -i eth0 -Q out -U -w a.pcap 2>/dev/null & T1=$!
ip netns exec $B tcpdump -i eth0 -Q out -U -w b.pcap 2>/dev/null & T2=$!
ip netns exec $C tcpdump -i eth0 -Q out -U -w c.pcap 2>/dev/null & T3=$!
sleep 1
ip netns exec $B sh -c 'nc -l 8080 > /dev/null' & S1=$!
ip netns exec $B python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353)); s.settimeout(5)
d, a = s.recvfrom(100); s.sendto(b"pong " + d, a)' & S2=$!
sleep 0.3
# Allowed: TCP 8080 and UDP 5353 from pod-a, with their replies.
echo hello | ip netns exec $A nc -N 10.200.0.11 8080
ip netns exec $A python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.bind(("0.0.0.0", 40053))
s.sendto(b"ping", ("10.200.0.11", 5353)); print(s.recvfrom(100)[0])'
wait $S1 $S2 || true
# Denied: pod-c to TCP 8080 (one SYN; nc gives up after 0.5 s), pod-a to TCP 9090, pod-a's ping.
ip netns exec $C timeout 0.5 nc 10.200.0.11 8080 </dev/null || true
ip netns exec $A timeout 0.5 nc 10.200.0.11 9090 </dev/null || true
ip netns exec $A ping -c 1 -W 0.3 10.200.0.11 >/dev/null || true
# pod-c to pod-a is not restricted.
ip netns exec $C ping -c 1 10.200.0.10 >/dev/null
sleep 0.3
kill -INT $T1 $T2 $T3; wait $T1 $T2 $T3 || true
for p in $A $B $C; do ip netns exec $p ip neigh del 10.200.0.1 dev eth0; done
