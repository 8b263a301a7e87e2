#!/bin/bash
# A/B: iperf3 TCP through a veth, nothing attached vs podtrace with a filter
# matching nothing (see notes.md, "Filter notes"). Root; makes netns abtest and
# veth abh (10.246.199.0/24) and removes them on exit. Build first:
# cargo build --release -p podtrace
set -e
PT=${PODTRACE_BIN:-$(dirname "$0")/../../../target/release/podtrace}
ip netns add abtest
trap 'kill $SRV 2>/dev/null; ip netns del abtest; ip link del abh 2>/dev/null; true' EXIT
ip link add abh type veth peer name abn netns abtest
ip addr add 10.246.199.1/24 dev abh; ip link set abh up
ip -n abtest addr add 10.246.199.2/24 dev abn; ip -n abtest link set abn up; ip -n abtest link set lo up
ip netns exec abtest iperf3 -s -B 10.246.199.2 -p 5299 >/dev/null 2>&1 & SRV=$!
sleep 1
steal() { awk '/^cpu /{print $9}' /proc/stat; }
one() {
  local mode=$1 pid=
  if [ $mode = filter ]; then $PT capture -i abh -s 96 -w /tmp/ab.pcap --filter-engine native -- udp port 9 2>/tmp/ab.err & pid=$!; sleep 1; fi
  local s0=$(steal)
  local bps=$(iperf3 -c 10.246.199.2 -p 5299 -t 10 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  local s1=$(steal)
  if [ -n "$pid" ]; then kill -INT $pid; wait $pid; tail -1 /tmp/ab.err; fi
  printf "%-8s %6.2f Gbit/s  steal %d ticks\n" $mode $bps $((s1-s0))
}
for i in 1 2 3 4 5 6; do
  if [ $((i%2)) = 1 ]; then one nothing; one filter; else one filter; one nothing; fi
done
