set -e
# Run from control/cli/tests/captures with the lab `replaycap` up and no policy imported.
A=xylem-replaycap-pod-pod-a
ip netns exec $A tcpdump -i eth0 -U -w malformed.pcap & T=$!
sleep 2
ip netns exec $A python3 malformed.py 0e:78:79:6c:00:01 10.200.0.11 10.200.0.10
sleep 1
kill -INT $T; wait $T
