//! podtrace's kernel side: two TC classifiers (ingress, egress) that copy up to
//! `SNAPLEN` bytes of every packet, with a small header, into one ring buffer.
//!
//! Why a ring buffer drained on a timer rather than a perf buffer: on this
//! 2-core machine a 64-byte UDP flood through a veth kept 166 kpps with
//! `BPF_RB_NO_WAKEUP` + a 10 ms userspace timer, against 75 kpps with a perf
//! buffer (aya wakes userspace on every perf sample) and 85 kpps with a ring
//! buffer that wakes per record. Wakeups, not copies, are the cost. A forced
//! wakeup once the ring is `WAKEUP_BYTES` full keeps bursts from overflowing
//! it between ticks. See BENCHMARKS.md for podtrace's own numbers.
//!
//! With a filter (`FILTER_LEN` > 0) each packet first runs through the
//! classic-BPF interpreter in [`filter`]; rejected packets are only counted.
//!
//! `FILTER_LEN` is a read-only global, so with no filter the verifier sees
//! the constant 0 and drops the interpreter from the program entirely.
//!
//! A frame whose outer 802.1Q/802.1ad tag the kernel holds in skb metadata
//! (see `podtrace_common::VLAN_TAG_LEN`) is written, and filtered, with the
//! tag back at offset 12, as libpcap does on Linux.
//!
//! With a translated filter (userspace's `filter::translate`) the filter is
//! a program of its own, attached in front; it tail-calls these programs
//! through `CAPTURE` for the packets it accepts, and they run with no
//! filter of their own.
//!
//! Every packet is counted (passed, filtered, lost) in the counter slot of
//! its link, so a capture of many pods knows each one's exact numbers: one
//! array lookup by ifindex per packet (`slot_of`). A translated filter
//! counts what it rejects through a tail call into `podtrace_rejected`.
//!
//! A pod whose CNI delivers packets straight into its eth0 (Cilium's
//! `bpf_redirect_peer`), past the host end of its veth, gets a third hook:
//! `podtrace_eth0` at the ingress of its eth0, inside its namespace. Its
//! ifindex there means nothing on the host, so a small stub that userspace
//! loads per pod writes the pod's host link and counter slot to `POD_LINK`
//! and tail-calls it (through `CAPTURE`).
//!
//! The programs never change the verdict: they always return `TCX_NEXT`, which
//! continues the TCX chain and legacy direct-action filters alike (TC_ACT_OK
//! or TC_ACT_PIPE would end the TCX chain and hide programs attached after us).
#![no_std]
#![no_main]

mod filter;

use aya_ebpf::{
    bindings::{
        __sk_buff, tcx_action_base::TCX_NEXT, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use podtrace_common::{
    LinkSlot, RecordHeader, CAPTURE_SLOTS, COUNTERS_LEN, COUNTER_FILTERED, COUNTER_LOST,
    COUNTER_PASSED, HOOK_EGRESS, HOOK_ETH0_INGRESS, HOOK_INGRESS, LINK_TABLE_LEN, MAX_CAPLEN,
    RECORD_HEADER_LEN, SLOT_UNATTRIBUTED, VLAN_TAG_LEN, VLAN_TAG_OFFSET,
};

/// Bytes of each packet to copy; set by the loader (`-s`).
#[no_mangle]
static SNAPLEN: u32 = 262144;

/// Instructions of the classic-BPF filter in `filter::FILTER`; 0 for none.
/// Set by the loader.
#[no_mangle]
static FILTER_LEN: u32 = 0;

/// Force a wakeup once this much unread data sits in the ring; set by the loader.
#[no_mangle]
static WAKEUP_BYTES: u64 = 1 << 20;

/// Records go to userspace here. Size set by the loader (`-B`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU counters, `COUNTERS_LEN` per slot; a link's slot comes from
/// `LINK_SLOTS`. Slots are sized by the loader (`-B`-independent: one per
/// link a capture can hold at once).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Each attached link's slot, at `ifindex % LINK_TABLE_LEN`; set by
/// userspace before it attaches to the link, so its first packet counts.
#[map]
static LINK_SLOTS: Array<LinkSlot> = Array::with_max_entries(LINK_TABLE_LEN, 0);

/// Slots of the links whose table entry another link holds (rare).
#[map]
static LINK_SLOTS_MORE: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);

/// The capture programs by hook and `podtrace_rejected`, for a translated
/// filter or a pod's eth0 stub to tail-call (see podtrace-common's
/// `CAPTURE_SLOT_*`). Filled by the loader; unused by these programs
/// themselves.
#[map]
static CAPTURE: ProgramArray = ProgramArray::with_max_entries(CAPTURE_SLOTS, 0);

/// The host link and counter slot of the pod whose eth0 hook runs: written
/// by the pod's stub just before it tail-calls `podtrace_eth0`, read in the
/// same run on the same CPU (TC programs do not nest on one CPU).
#[map]
static POD_LINK: PerCpuArray<LinkSlot> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn podtrace_ingress(ctx: TcContext) -> i32 {
    capture(&ctx, HOOK_INGRESS);
    TCX_NEXT
}

#[classifier]
pub fn podtrace_egress(ctx: TcContext) -> i32 {
    capture(&ctx, HOOK_EGRESS);
    TCX_NEXT
}

/// Counts a packet a translated filter rejected, in its link's slot; only
/// ever reached by a tail call from that filter.
#[classifier]
pub fn podtrace_rejected(ctx: TcContext) -> i32 {
    count(slot_of(&ctx), COUNTER_FILTERED);
    TCX_NEXT
}

/// What a pod receives, at the ingress of its own eth0; reached only from
/// the pod's stub (directly, or through a translated filter).
#[classifier]
pub fn podtrace_eth0(ctx: TcContext) -> i32 {
    if let Some(&link) = POD_LINK.get(0) {
        capture_on(&ctx, HOOK_ETH0_INGRESS, link.ifindex, link.slot);
    }
    TCX_NEXT
}

/// Counts a packet a translated filter rejected at a pod's eth0.
#[classifier]
pub fn podtrace_eth0_rejected(_ctx: TcContext) -> i32 {
    if let Some(link) = POD_LINK.get(0) {
        count(link.slot, COUNTER_FILTERED);
    }
    TCX_NEXT
}

/// The counter slot of the link the packet is on.
#[inline(always)]
fn slot_of(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match LINK_SLOTS.get(ifindex % LINK_TABLE_LEN) {
        Some(entry) if entry.ifindex == ifindex => entry.slot,
        // SAFETY: the value is a plain u32, read at once.
        _ => unsafe { LINK_SLOTS_MORE.get(&ifindex) }
            .copied()
            .unwrap_or(SLOT_UNATTRIBUTED),
    }
}

#[inline(always)]
fn count(slot: u32, counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot * COUNTERS_LEN + counter) {
        // SAFETY: per-CPU slot, TC programs do not nest on one CPU.
        unsafe { *value += 1 };
    }
}

/// The outer VLAN tag the kernel holds in the skb's metadata, as it goes on
/// the wire (TPID << 16 | TCI); 0 when there is none (no TPID is 0).
#[inline(always)]
fn vlan_tag(skb: *mut __sk_buff) -> u32 {
    // SAFETY: context fields of the program's own skb (the tag's only read
    // when there is one: most packets have none).
    unsafe {
        if (*skb).vlan_present == 0 {
            return 0;
        }
        // `vlan_proto` is the kernel's __be16, read as is.
        (u32::from(u16::from_be((*skb).vlan_proto as u16)) << 16) | ((*skb).vlan_tci & 0xffff)
    }
}

#[inline(always)]
fn capture(ctx: &TcContext, hook: u8) {
    // SAFETY: `skb` is the context pointer the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    capture_on(ctx, hook, ifindex, slot_of(ctx));
}

/// Captures the packet as one of host link `ifindex`, counted in `slot`.
#[inline(always)]
fn capture_on(ctx: &TcContext, hook: u8, ifindex: u32, slot: u32) {
    // Two copies of what follows: the one for untagged packets (nearly all)
    // is what it was before tags were handled, as fast (the tag as a
    // variable cost a few ns per packet, in spills and branches).
    match vlan_tag(ctx.skb.skb) {
        0 => capture_tagged(ctx, hook, ifindex, slot, 0),
        tag => capture_tagged(ctx, hook, ifindex, slot, tag),
    }
}

/// [`capture_on`] for a packet with `tag` (0: none) put back.
#[inline(always)]
fn capture_tagged(ctx: &TcContext, hook: u8, ifindex: u32, slot: u32, tag: u32) {
    let len = ctx.len();
    // SAFETY: a read-only global; volatile so the compiler cannot fold the
    // default (the verifier does fold the loader's value).
    let filter_len = unsafe { core::ptr::read_volatile(&FILTER_LEN) };
    // Like a socket filter's return value: 0 drops, else bytes to keep.
    let keep = if filter_len == 0 {
        u32::MAX
    } else {
        filter::run(ctx.skb.skb, len, tag)
    };
    if keep == 0 {
        count(slot, COUNTER_FILTERED);
        return;
    }
    count(slot, COUNTER_PASSED);
    if try_capture(ctx, hook, ifindex, len, tag, keep).is_err() {
        count(slot, COUNTER_LOST);
    }
}

#[inline(always)]
fn try_capture(
    ctx: &TcContext,
    hook: u8,
    ifindex: u32,
    len: u32,
    tag: u32,
    keep: u32,
) -> Result<(), ()> {
    let skb = ctx.skb.skb;
    // SAFETY: a read-only global, see FILTER_LEN.
    let snaplen = unsafe { core::ptr::read_volatile(&SNAPLEN) };
    // libpcap puts the tag back only after both addresses were captured.
    let tag = if len.min(snaplen).min(keep) >= VLAN_TAG_OFFSET {
        tag
    } else {
        0
    };
    let wire_len = if tag != 0 { len + VLAN_TAG_LEN } else { len };
    let wanted = wire_len.min(snaplen).min(keep).min(MAX_CAPLEN);
    // The verifier must see the bound on the very register used for the copy.
    let n = core::hint::black_box(wanted);
    if n == 0 || n > MAX_CAPLEN {
        return Ok(());
    }
    let header = RecordHeader {
        // SAFETY: BPF helper, always valid in program context.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        orig_len: wire_len,
        cap_len: n,
        hook,
        _pad: [0; 3],
    };
    // The smallest record class that holds header + n bytes (see emit).
    let total = n as usize + RECORD_HEADER_LEN;
    macro_rules! classes {
        ($($size:literal),+) => {
            $(if total <= $size {
                return emit::<$size>(skb, &header, n, tag);
            })+
        };
    }
    classes!(
        128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384,
        24576, 32768, 49152, 65560
    );
    Err(())
}

/// Copies the packet straight from the skb into a ring reservation of
/// `SIZE` bytes (header + data + unread slack of at most a third).
///
/// The verifier needs a constant size per reservation, hence the classes;
/// before, the packet went skb → per-CPU scratch → ring (bpf_ringbuf_output),
/// one copy more.
#[inline(always)]
fn emit<const SIZE: usize>(
    skb: *mut __sk_buff,
    header: &RecordHeader,
    n: u32,
    tag: u32,
) -> Result<(), ()> {
    // SAFETY: read-only global, see SNAPLEN.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let mut entry = EVENTS.reserve_bytes(SIZE, 0).ok_or(())?;
    // The verifier knows 0 < n <= SIZE - RECORD_HEADER_LEN from the checks in
    // try_capture on this same register (no black_box here: it would forget).
    let record = entry.as_mut_ptr();
    // SAFETY: the reservation is 8-byte aligned and SIZE > RECORD_HEADER_LEN;
    // the copy stays within it (n <= SIZE - RECORD_HEADER_LEN), and a tag is
    // only put back when n >= VLAN_TAG_OFFSET (try_capture).
    let ret = unsafe {
        record.cast::<RecordHeader>().write(*header);
        let data = record.add(RECORD_HEADER_LEN);
        if tag == 0 {
            bpf_skb_load_bytes(skb as *const _, 0, data.cast(), n)
        } else {
            copy_tagged::<SIZE>(skb, data, n, tag)
        }
    };
    if ret < 0 {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(());
    }
    entry.submit(flags as u64);
    Ok(())
}

/// Copies the first `n` bytes of the frame with `tag` put back at offset
/// 12 to `data`: the packet goes 4 bytes in, then its addresses move back
/// over the gap (as libpcap does, one helper call rather than two).
///
/// # Safety
/// `data` is 4-byte aligned and `SIZE - RECORD_HEADER_LEN` bytes long, and
/// `VLAN_TAG_OFFSET <= n <= SIZE - RECORD_HEADER_LEN`.
#[inline(always)]
unsafe fn copy_tagged<const SIZE: usize>(
    skb: *mut __sk_buff,
    data: *mut u8,
    n: u32,
    tag: u32,
) -> i64 {
    let gap = VLAN_TAG_LEN as usize;
    // At least the addresses, which a tagged frame always has.
    let from_skb = if n > VLAN_TAG_OFFSET + VLAN_TAG_LEN {
        n - VLAN_TAG_LEN
    } else {
        VLAN_TAG_OFFSET
    };
    // The verifier must see the bound on the register used for the copy.
    let m = core::hint::black_box(from_skb);
    if m == 0 || m as usize > SIZE - RECORD_HEADER_LEN - gap {
        return -1;
    }
    let ret = bpf_skb_load_bytes(skb as *const _, 0, data.add(gap).cast(), m);
    if ret < 0 {
        return ret;
    }
    let words = data.cast::<u32>();
    let macs = [
        words.add(1).read(),
        words.add(2).read(),
        words.add(3).read(),
    ];
    for (i, w) in macs.into_iter().enumerate() {
        words.add(i).write(w);
    }
    words.add(3).write(tag.to_be());
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}
