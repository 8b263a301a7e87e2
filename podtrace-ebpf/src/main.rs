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
//! `FILTER_LEN` is a read-only global, so with no filter the verifier sees
//! the constant 0 and drops the interpreter from the program entirely.
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
        tcx_action_base::TCX_NEXT, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use podtrace_common::{
    LinkSlot, RecordHeader, CAPTURE_SLOTS, COUNTERS_LEN, COUNTER_FILTERED, COUNTER_LOST,
    COUNTER_PASSED, HOOK_EGRESS, HOOK_ETH0_INGRESS, HOOK_INGRESS, LINK_TABLE_LEN, MAX_CAPLEN,
    RECORD_HEADER_LEN, SLOT_UNATTRIBUTED,
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

#[inline(always)]
fn capture(ctx: &TcContext, hook: u8) {
    // SAFETY: `skb` is the context pointer the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    capture_on(ctx, hook, ifindex, slot_of(ctx));
}

/// Captures the packet as one of host link `ifindex`, counted in `slot`.
#[inline(always)]
fn capture_on(ctx: &TcContext, hook: u8, ifindex: u32, slot: u32) {
    let len = ctx.len();
    // SAFETY: a read-only global; volatile so the compiler cannot fold the
    // default (the verifier does fold the loader's value).
    let filter_len = unsafe { core::ptr::read_volatile(&FILTER_LEN) };
    // Like a socket filter's return value: 0 drops, else bytes to keep.
    let keep = if filter_len == 0 {
        u32::MAX
    } else {
        filter::run(ctx.skb.skb, len, filter_len)
    };
    if keep == 0 {
        count(slot, COUNTER_FILTERED);
        return;
    }
    count(slot, COUNTER_PASSED);
    if try_capture(ctx, hook, ifindex, len, keep).is_err() {
        count(slot, COUNTER_LOST);
    }
}

#[inline(always)]
fn try_capture(ctx: &TcContext, hook: u8, ifindex: u32, len: u32, keep: u32) -> Result<(), ()> {
    let skb = ctx.skb.skb;
    // SAFETY: a read-only global, see FILTER_LEN.
    let snaplen = unsafe { core::ptr::read_volatile(&SNAPLEN) };
    let wanted = len.min(snaplen).min(keep).min(MAX_CAPLEN);
    // The verifier must see the bound on the very register used for the copy.
    let n = core::hint::black_box(wanted);
    if n == 0 || n > MAX_CAPLEN {
        return Ok(());
    }
    let header = RecordHeader {
        // SAFETY: BPF helper, always valid in program context.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        orig_len: len,
        cap_len: n,
        hook,
        _pad: [0; 3],
    };
    // The smallest record class that holds header + n bytes (see emit).
    let total = n as usize + RECORD_HEADER_LEN;
    macro_rules! classes {
        ($($size:literal),+) => {
            $(if total <= $size {
                return emit::<$size>(skb, &header, n);
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
    skb: *mut aya_ebpf::bindings::__sk_buff,
    header: &RecordHeader,
    n: u32,
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
    // the copy stays within it (n <= SIZE - RECORD_HEADER_LEN).
    let ret = unsafe {
        record.cast::<RecordHeader>().write(*header);
        bpf_skb_load_bytes(skb as *const _, 0, record.add(RECORD_HEADER_LEN).cast(), n)
    };
    if ret < 0 {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(());
    }
    entry.submit(flags as u64);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}
