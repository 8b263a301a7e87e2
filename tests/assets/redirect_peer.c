// Cilium's shortcut, for the redirect tests: at the ingress of pod A's
// host veth, IPv4 packets addressed to pod B go straight into B's eth0 with
// bpf_redirect_peer (the peer of B's host veth), so they never cross B's
// host veth. Everything else goes on (TCX_NEXT). Built by the tests with
// clang, with PEER_IFINDEX (B's host veth) and PEER_IP (B's address, host
// order) defined.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>

#define SEC(name) __attribute__((section(name), used))
#define TCX_NEXT (-1)

#ifndef PEER_IFINDEX
#error "define PEER_IFINDEX"
#endif
#ifndef PEER_IP
#error "define PEER_IP"
#endif

static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;

SEC("classifier")
int redirect_peer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != __builtin_bswap16(ETH_P_IP))
		return TCX_NEXT;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->daddr != __builtin_bswap32(PEER_IP))
		return TCX_NEXT;
	return bpf_redirect_peer(PEER_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
