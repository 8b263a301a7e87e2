//! A classic-BPF interpreter: runs the tcpdump filter libpcap compiled (held
//! in the `FILTER` map) on the packet, before anything is copied to the ring.
//!
//! This is the fallback engine: userspace first translates the filter to
//! native eBPF (`podtrace/src/filter/translate.rs`, ~1 ns per instruction
//! once JIT-compiled) and loads these programs without a filter; the
//! interpreter runs what the verifier refuses translated, or what is too
//! big for 16-bit jumps, and whatever `--filter-engine interpreter` asks for.
//!
//! Why an interpreter driven by `bpf_loop`, one cBPF instruction per
//! callback: the verifier checks the callback body once, whatever the filter
//! length (~23-32 k processed instructions here, the same for 20 or 4059
//! cBPF instructions), so real-world filters of thousands of instructions
//! load. A plain bounded loop is unrolled by the verifier and hits its 1 M
//! instruction limit at ~16 cBPF instructions. Measured here with
//! BPF_PROG_TEST_RUN on a 64-byte UDP frame (egress program): ~100-120 ns
//! per packet for a filter rejecting after 3 instructions, ~210 ns after 12
//! (`udp port 9`), ~650 ns after 67 (a 31-host list), so ~8-11 ns per
//! interpreted instruction; capturing that frame with no filter, ~90 ns.
//!
//! Semantics are those of libpcap's `bpf_filter()` (what `tcpdump -r` runs):
//! packet loads are bounds-checked against the whole packet (`skb->len`),
//! and an out-of-bounds load, a division or modulo by zero, or a malformed
//! instruction rejects the packet (returns 0). Loads read the linear head
//! directly and anything beyond it with `bpf_skb_load_bytes`, so non-linear
//! GSO super-packets (up to 64 KiB on a host veth's egress) are read whole.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_skb_load_bytes, helpers::generated::bpf_loop, macros::map,
    maps::Array,
};
use podtrace_common::{FilterInsn, FILTER_MEMWORDS, MAX_FILTER_INSNS};

/// The compiled filter; its length is `FILTER_LEN` (set by the loader).
#[map]
static FILTER: Array<FilterInsn> = Array::with_max_entries(MAX_FILTER_INSNS, 0);

// Instruction classes and fields, as in <linux/filter.h> / <pcap/bpf.h>.
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;

const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;

const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;

/// Operand source bit of ALU and JMP: X instead of k.
const SRC_X: u16 = 0x08;

/// State of one run; lives on the TC program's stack and is handed to each
/// callback through `bpf_loop`'s context pointer.
#[repr(C)]
struct Vm {
    skb: *mut __sk_buff,
    /// `skb->len`, read once: the bound of every packet load (and `len`).
    len: u32,
    a: u32,
    x: u32,
    pc: u32,
    /// The filter's verdict: 0 rejects, otherwise bytes to keep.
    ret: u32,
    mem: [u32; FILTER_MEMWORDS as usize],
}

/// Runs the first `insns` instructions' program on the packet; returns the
/// filter's verdict (0: not wanted).
#[inline(always)]
pub fn run(skb: *mut __sk_buff, len: u32, insns: u32) -> u32 {
    let mut vm = Vm {
        skb,
        len,
        a: 0,
        x: 0,
        pc: 0,
        ret: 0,
        mem: [0; FILTER_MEMWORDS as usize],
    };
    // Every instruction moves pc forward (cBPF jumps are forward only), so
    // `insns` callbacks always reach a RET; running off the end rejects.
    // SAFETY: `step` matches bpf_loop's callback signature and `vm` outlives
    // the call.
    unsafe {
        bpf_loop(
            insns.min(MAX_FILTER_INSNS),
            step as *const () as *mut c_void,
            (&mut vm as *mut Vm).cast(),
            0,
        );
    }
    vm.ret
}

/// One instruction. Returns 0 to go on, 1 to stop (with `vm.ret` set).
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `&mut Vm` that `run` passed to bpf_loop.
    let vm = unsafe { &mut *ctx.cast::<Vm>() };
    match exec(vm) {
        Ok(()) => 0,
        Err(verdict) => {
            vm.ret = verdict;
            1
        }
    }
}

/// Executes the instruction at `vm.pc`; `Err(verdict)` ends the program.
#[inline(always)]
fn exec(vm: &mut Vm) -> Result<(), u32> {
    let insn = *FILTER.get(vm.pc).ok_or(0u32)?;
    vm.pc += 1;
    let (code, k) = (insn.code, insn.k);
    match code & 0x07 {
        LD => {
            vm.a = match code & 0xe0 {
                IMM => k,
                ABS => load(vm, k, code & 0x18)?,
                IND => load(vm, vm.x.checked_add(k).ok_or(0u32)?, code & 0x18)?,
                MEM => *vm.mem.get(k as usize).ok_or(0u32)?,
                LEN => vm.len,
                _ => return Err(0),
            }
        }
        LDX => {
            vm.x = match code & 0xe0 {
                IMM => k,
                MEM => *vm.mem.get(k as usize).ok_or(0u32)?,
                LEN => vm.len,
                // The IPv4 header length idiom: 4 * (P[k] & 0xf).
                MSH => (load(vm, k, B)? & 0xf) << 2,
                _ => return Err(0),
            }
        }
        ST => *vm.mem.get_mut(k as usize).ok_or(0u32)? = vm.a,
        STX => *vm.mem.get_mut(k as usize).ok_or(0u32)? = vm.x,
        ALU => {
            let src = if code & SRC_X != 0 { vm.x } else { k };
            vm.a = alu(code & 0xf0, vm.a, src)?;
        }
        JMP => {
            let src = if code & SRC_X != 0 { vm.x } else { k };
            let taken = match code & 0xf0 {
                0x00 => {
                    // JA: an unconditional jump by k (out of range rejects at
                    // the next fetch).
                    vm.pc = vm.pc.wrapping_add(k);
                    return Ok(());
                }
                0x10 => vm.a == src,
                0x20 => vm.a > src,
                0x30 => vm.a >= src,
                0x40 => vm.a & src != 0,
                _ => return Err(0),
            };
            vm.pc += u32::from(if taken { insn.jt } else { insn.jf });
        }
        RET => {
            return Err(match code & 0x18 {
                0x00 => k,
                0x10 => vm.a,
                _ => 0,
            })
        }
        MISC => match code & 0xf8 {
            0x00 => vm.x = vm.a, // TAX
            0x80 => vm.a = vm.x, // TXA
            _ => return Err(0),
        },
        _ => return Err(0),
    }
    Ok(())
}

/// `A op src`, 32-bit and wrapping like C; division by zero rejects.
#[inline(always)]
fn alu(op: u16, a: u32, src: u32) -> Result<u32, u32> {
    Ok(match op {
        0x00 => a.wrapping_add(src),
        0x10 => a.wrapping_sub(src),
        0x20 => a.wrapping_mul(src),
        0x30 => a.checked_div(src).ok_or(0u32)?,
        0x40 => a | src,
        0x50 => a & src,
        // Shifts of 32 or more give 0, as in libpcap's bpf_filter().
        0x60 => a.checked_shl(src).unwrap_or(0),
        0x70 => a.checked_shr(src).unwrap_or(0),
        0x80 => a.wrapping_neg(),
        0x90 => a.checked_rem(src).ok_or(0u32)?,
        0xa0 => a ^ src,
        _ => return Err(0),
    })
}

/// A big-endian load of `size` (W, H or B) bytes at packet offset `off`.
#[inline(always)]
fn load(vm: &Vm, off: u32, size: u16) -> Result<u32, u32> {
    match size {
        W => bytes::<4>(vm, off).map(u32::from_be_bytes),
        H => bytes::<2>(vm, off).map(|b| u32::from(u16::from_be_bytes(b))),
        B => bytes::<1>(vm, off).map(|b| u32::from(b[0])),
        _ => Err(0),
    }
}

/// Offsets below this may be read from the linear data directly.
const DIRECT_MAX: u32 = 0x3fff;

#[inline(always)]
fn bytes<const N: usize>(vm: &Vm, off: u32) -> Result<[u8; N], u32> {
    if off > vm.len || vm.len - off < N as u32 {
        return Err(0);
    }
    // Most loads hit the linear head (headers): read them directly, cheaper
    // than the helper call. The bound keeps the verifier's packet-pointer
    // arithmetic in range; black_box so LLVM cannot re-derive the offset
    // from `off` without the bound.
    let direct = core::hint::black_box(off as usize);
    if direct < DIRECT_MAX as usize {
        // SAFETY: reading context fields of the program's own skb.
        let (data, end) = unsafe { ((*vm.skb).data as usize, (*vm.skb).data_end as usize) };
        let p = data + direct;
        // Opaque to LLVM, so it keeps the `p + N > end` form the verifier
        // learns the packet range from (it rewrites `p + 1 <= end` to `p < end`).
        if p + core::hint::black_box(N) <= end {
            // SAFETY: [p, p + N) was just checked to lie in the linear data.
            return Ok(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) });
        }
    }
    let mut buf = [0u8; N];
    // SAFETY: `vm.skb` is the program's context; `buf` holds N bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            vm.skb as *const c_void,
            off,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    if ret < 0 {
        return Err(0);
    }
    Ok(buf)
}
