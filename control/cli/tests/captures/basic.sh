set -e
N=xylem-replaycap-node1; A=xylem-replaycap-pod-pod-a; B=xylem-replaycap-pod-pod-b
ip -n $A neigh flush all; ip -n $B neigh flush all; ip -n $N neigh flush dev xyhost
ip netns exec $A tcpdump -i eth0 -Q out -U -w a.pcap 2>/dev/null & T1=$!
ip netns exec $B tcpdump -i eth0 -Q out -U -w b.pcap 2>/dev/null & T2=$!
ip netns exec $N tcpdump -i xyhost -Q out -U -w host.pcap 2>/dev/null & T3=$!
sleep 1
# TCP server and a UDP echo server in pod-b.
ip netns exec $B sh -c 'nc -l 8080 > /dev/null' & S1=$!
ip netns exec $B python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353)); s.settimeout(5)
d, a = s.recvfrom(100); s.sendto(b"pong " + d, a)' & S2=$!
sleep 0.3
ip netns exec $A ping -c 2 -i 0.2 10.200.0.11 >/dev/null
ip netns exec $A ping -c 1 10.200.0.1 >/dev/null
ip netns exec $N ping -c 1 10.200.0.10 >/dev/null
echo hello | ip netns exec $A nc -N 10.200.0.11 8080
ip netns exec $A python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.bind(("0.0.0.0", 40053))
s.sendto(b"ping", ("10.200.0.11", 5353)); print(s.recvfrom(100)[0])'
wait $S1 $S2 || true
sleep 0.5
kill -INT $T1 $T2 $T3; wait $T1 $T2 $T3 || true
