#!/bin/bash
# How much of each CPU podtrace takes from one iperf3 TCP stream through a
# veth while a filter matching nothing is attached (see notes.md, "Filter
# notes"): perf samples every CPU for 10 s and this counts the samples in
# podtrace's programs, the TC hook (tc_run) and podtrace's own process.
# Root; needs perf. Makes netns cpushare and veth csh (10.246.198.0/24) and
# removes them on exit. Build first: cargo build --release -p podtrace
set -e
PT=${PODTRACE_BIN:-$(dirname "$0")/../../../target/release/podtrace}
OUT=$(mktemp -d)
ip netns add cpushare
trap 'kill $PID $SRV 2>/dev/null; wait $PID 2>/dev/null; ip netns del cpushare; ip link del csh 2>/dev/null; rm -rf $OUT; true' EXIT
ip link add csh type veth peer name csn netns cpushare
ip addr add 10.246.198.1/24 dev csh; ip link set csh up
ip -n cpushare addr add 10.246.198.2/24 dev csn; ip -n cpushare link set csn up
ip netns exec cpushare iperf3 -s -B 10.246.198.2 -p 5298 >/dev/null 2>&1 & SRV=$!
sleep 1
$PT capture -i csh -s 96 -w $OUT/x.pcap --filter-engine native -- udp port 9 2>$OUT/err & PID=$!
sleep 1
iperf3 -c 10.246.198.2 -p 5298 -t 13 >/dev/null & IPERF=$!
sleep 1.5
perf record -q -F 4999 -a -o $OUT/perf.data -- sleep 10 2>/dev/null
wait $IPERF
kill -INT $PID; wait $PID; PID=; tail -1 $OUT/err
perf report -i $OUT/perf.data --no-children --sort cpu,comm,sym -g none -F overhead,cpu,comm,sym 2>/dev/null \
  | awk '/%/ { pct=$1; sub("%","",pct); cpu=$2; all[cpu]+=pct;
               if ($3=="podtrace") user[cpu]+=pct;
               else if ($0 ~ /podtrace_/) prog[cpu]+=pct;
               else if ($NF=="tc_run") hook[cpu]+=pct }
         END { for (c in all) printf "CPU %s: programs %.2f%%, tc_run %.2f%%, podtrace process %.2f%% of its samples\n",
                 c, 100*prog[c]/all[c], 100*hook[c]/all[c], 100*user[c]/all[c] }'
