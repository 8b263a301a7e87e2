//! Types shared by the eBPF programs and userspace: the ring record layout and
//! the indices of the per-CPU counters.
#![no_std]

/// Which TC hook of the host-side interface saw the packet.
///
/// On the host end of a pod's veth, `INGRESS` carries what the pod sent and
/// `EGRESS` what is delivered to it; userspace turns this into the pod's view.
pub const HOOK_INGRESS: u8 = 0;
/// See [`HOOK_INGRESS`].
pub const HOOK_EGRESS: u8 = 1;
/// The ingress of the pod's own `eth0`, inside its network namespace: what
/// the pod receives, when a CNI delivers packets there without crossing the
/// host end of the veth (Cilium's `bpf_redirect_peer`). The record's
/// `ifindex` is then the host link's, not eth0's (which lives in another
/// namespace and may equal any host ifindex).
pub const HOOK_ETH0_INGRESS: u8 = 2;

/// Header of every ring record; `cap_len` packet bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Host ifindex of the interface the program is attached to.
    pub ifindex: u32,
    /// Length of the packet on the wire (skb->len).
    pub orig_len: u32,
    /// Number of packet bytes that follow this header.
    pub cap_len: u32,
    /// [`HOOK_INGRESS`], [`HOOK_EGRESS`] or [`HOOK_ETH0_INGRESS`].
    pub hook: u8,
    pub _pad: [u8; 3],
}

/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// Most packet bytes one record can hold. Host-side egress skbs can be GSO
/// super-packets of up to 64 KiB, so this matches that, as tcpdump's would.
pub const MAX_CAPLEN: u32 = 65535;

/// Counter of a link's slot: packets the filter let through (all of them
/// without a filter). Packets seen = passed + filtered: a rejected packet
/// bumps one counter only.
pub const COUNTER_PASSED: u32 = 0;
/// Packets that could not be delivered to userspace (ring full).
pub const COUNTER_LOST: u32 = 1;
/// Packets rejected by the capture filter.
pub const COUNTER_FILTERED: u32 = 2;
/// Counters per slot (one unused, for alignment): slot `s`'s counter `c`
/// is at index `s * COUNTERS_LEN + c` of the per-CPU counter array.
pub const COUNTERS_LEN: u32 = 4;

/// Slot of packets on a link without one of its own (never expected: a
/// link's slot is set before programs are attached to it).
pub const SLOT_UNATTRIBUTED: u32 = 0;

/// Entries of the table that gives each attached link its counter slot,
/// indexed by `ifindex % LINK_TABLE_LEN`: one array lookup per packet.
/// A link whose entry is taken by another finds its slot in a hash map.
pub const LINK_TABLE_LEN: u32 = 4096;

/// An entry of the link table: the link it belongs to, and its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinkSlot {
    /// 0 for a free entry (no link has ifindex 0).
    pub ifindex: u32,
    pub slot: u32,
}

/// Slots of `CAPTURE`, the program array a translated filter tail-calls:
/// the capture programs by hook, then the one that counts rejected packets.
pub const CAPTURE_SLOT_INGRESS: u32 = 0;
/// See [`CAPTURE_SLOT_INGRESS`].
pub const CAPTURE_SLOT_EGRESS: u32 = 1;
/// See [`CAPTURE_SLOT_INGRESS`].
pub const CAPTURE_SLOT_REJECTED: u32 = 2;
/// The capture program of a pod's eth0 hook, and the one that counts what
/// a translated filter rejects there: the packet's link comes from
/// `POD_LINK`, not from its ifindex.
pub const CAPTURE_SLOT_ETH0: u32 = 3;
/// See [`CAPTURE_SLOT_ETH0`].
pub const CAPTURE_SLOT_ETH0_REJECTED: u32 = 4;
/// Where a pod's eth0 hook goes first: the translated filter for that hook,
/// or [`CAPTURE_SLOT_ETH0`]'s program itself when there is none.
pub const CAPTURE_SLOT_ETH0_ENTRY: u32 = 5;
/// Slots of `CAPTURE`.
pub const CAPTURE_SLOTS: u32 = 6;

/// One classic-BPF instruction, laid out like libpcap's `struct bpf_insn`
/// (and the kernel's `struct sock_filter`), so a compiled filter is copied
/// into the eBPF map as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Longest classic-BPF filter accepted: the kernel's `BPF_MAXINSNS`, which
/// is also what libpcap's own validator allows.
pub const MAX_FILTER_INSNS: u32 = 4096;

/// Slots of classic BPF's scratch memory `M[]` (`BPF_MEMWORDS`).
pub const FILTER_MEMWORDS: u32 = 16;

/// Both filter engines read a packet offset below this straight from the
/// skb's linear head (when the head holds it), anything else with
/// `bpf_skb_load_bytes`. The verifier allows direct offsets up to 0xffff;
/// filters rarely look past the first few hundred bytes.
pub const FILTER_DIRECT_MAX: u32 = 0x3fff;

/// Where an 802.1Q/802.1ad tag sits in an Ethernet frame: after the two
/// MAC addresses.
pub const VLAN_TAG_OFFSET: u32 = 12;

/// Bytes of one 802.1Q/802.1ad tag (TPID and TCI).
///
/// On receive, and on transmit from a VLAN device or a bridge, the kernel
/// keeps a frame's outer tag in skb metadata (`vlan_present`, `vlan_proto`,
/// `vlan_tci`) instead of in the packet bytes TC programs read. Like libpcap
/// on Linux, podtrace puts that tag back at [`VLAN_TAG_OFFSET`] in the frame
/// it writes, and its filters see the frame as written: 4 bytes longer,
/// with the tag at offset 12.
pub const VLAN_TAG_LEN: u32 = 4;

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), no padding holes left uninitialised by the
// kernel side (it writes `_pad` explicitly).
unsafe impl aya::Pod for RecordHeader {}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), 8 bytes without padding.
unsafe impl aya::Pod for FilterInsn {}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), two u32 without padding.
unsafe impl aya::Pod for LinkSlot {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_stable() {
        // The eBPF side and userspace must agree byte for byte.
        assert_eq!(RECORD_HEADER_LEN, 24);
        assert_eq!(core::mem::align_of::<RecordHeader>(), 8);
    }

    #[test]
    fn filter_insn_is_a_bpf_insn() {
        assert_eq!(core::mem::size_of::<FilterInsn>(), 8);
        assert_eq!(core::mem::align_of::<FilterInsn>(), 4);
    }
}
