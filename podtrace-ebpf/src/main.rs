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
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use podtrace_common::{
    RecordHeader, COUNTERS_LEN, COUNTER_FILTERED, COUNTER_LOST, COUNTER_SEEN, HOOK_EGRESS,
    HOOK_INGRESS, MAX_CAPLEN, RECORD_HEADER_LEN,
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

/// Per-CPU staging area for one record: the ring's variable-size output needs
/// a contiguous source, and a per-CPU array value cannot exceed 32 KiB, so this
/// is a plain array with one slot per CPU (sized by the loader).
#[map]
static SCRATCH: Array<Record> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[repr(C)]
pub struct Record {
    header: RecordHeader,
    data: [u8; MAX_CAPLEN as usize + 1],
}

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

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, TC programs do not nest on one CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn capture(ctx: &TcContext, hook: u8) {
    count(COUNTER_SEEN);
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
        count(COUNTER_FILTERED);
        return;
    }
    if try_capture(ctx, hook, len, keep).is_err() {
        count(COUNTER_LOST);
    }
}

#[inline(always)]
fn try_capture(ctx: &TcContext, hook: u8, len: u32, keep: u32) -> Result<(), ()> {
    let skb = ctx.skb.skb;
    // SAFETY: a read-only global, see FILTER_LEN.
    let snaplen = unsafe { core::ptr::read_volatile(&SNAPLEN) };
    let wanted = len.min(snaplen).min(keep).min(MAX_CAPLEN);
    // The verifier must see the bound on the very register used for the copy.
    let n = core::hint::black_box(wanted);
    if n == 0 || n > MAX_CAPLEN {
        return Ok(());
    }
    // SAFETY: BPF helper, always valid in program context.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slot = SCRATCH.get_ptr_mut(cpu).ok_or(())?;
    // SAFETY: the slot belongs to this CPU and TC programs do not nest on it.
    let record = unsafe { &mut *slot };
    record.header = RecordHeader {
        // SAFETY: BPF helper, always valid in program context.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: `skb` is the context pointer the kernel gave us.
        ifindex: unsafe { (*skb).ifindex },
        orig_len: len,
        cap_len: n,
        hook,
        _pad: [0; 3],
    };
    // SAFETY: copies at most `n` <= MAX_CAPLEN bytes into a buffer one larger.
    let ret = unsafe { bpf_skb_load_bytes(skb as *const _, 0, record.data.as_mut_ptr().cast(), n) };
    if ret < 0 {
        return Err(());
    }
    // SAFETY: header and data are contiguous in a repr(C) struct.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (record as *const Record).cast::<u8>(),
            RECORD_HEADER_LEN + n as usize,
        )
    };
    // SAFETY: read-only global, see SNAPLEN.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    EVENTS.output::<[u8]>(bytes, flags as u64).map_err(|_| ())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}
