// A "foreign" TC program for the coexistence tests: drops UDP datagrams to
// DROP_PORT and passes everything else on (TCX_NEXT), like a CNI's policy
// program would. Built by the tests with clang.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define TC_ACT_SHOT 2
#define TCX_NEXT (-1)

#ifndef DROP_PORT
#error "define DROP_PORT"
#endif

SEC("classifier")
int drop_udp_port(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != __builtin_bswap16(ETH_P_IP))
		return TCX_NEXT;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return TCX_NEXT;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return TCX_NEXT;
	return udp->dest == __builtin_bswap16(DROP_PORT) ? TC_ACT_SHOT : TCX_NEXT;
}

char _license[] SEC("license") = "GPL";
