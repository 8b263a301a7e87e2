//! A classic-BPF interpreter: runs the tcpdump filter libpcap compiled (held
//! in the `FILTER` map) on the packet, before anything is copied to the ring.
//!
//! This is the fallback engine: userspace first translates the filter to
//! native eBPF (`podtrace/src/filter/translate.rs`, several times faster per
//! instruction: BENCHMARKS.md, table 5c) and loads these programs without a
//! filter; the interpreter runs what the verifier refuses translated, what
//! is too big for 16-bit jumps, programs that loop (`protochain`), and
//! whatever `--filter-engine interpreter` asks for.
//!
//! Why an interpreter driven by `bpf_loop`, one cBPF instruction per
//! callback: the verifier checks the callback body once, whatever the filter
//! length, so real-world filters of thousands of instructions load. A plain
//! bounded loop is unrolled by the verifier and hits its 1 M instruction
//! limit at ~16 cBPF instructions.
//!
//! Semantics are those of libpcap's `bpf_filter()` (what `tcpdump -r` runs):
//! packet loads are bounds-checked against the whole packet (`skb->len`),
//! and an out-of-bounds load, a division or modulo by zero, or a malformed
//! instruction rejects the packet (returns 0). `ja` takes its offset as
//! signed, as libpcap does for `protochain`'s loop over extension headers.
//! Loads read the linear head directly and anything beyond it with
//! `bpf_skb_load_bytes`, so non-linear GSO super-packets (up to 64 KiB on a
//! host veth's egress) are read whole.
//!
//! The packet is the frame podtrace writes: with an outer VLAN tag the
//! kernel holds in metadata put back at offset 12 (`podtrace_common::VLAN_TAG_LEN`),
//! so loads past the tag read 4 bytes earlier in the skb and `len` is 4 more.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_skb_load_bytes, helpers::generated::bpf_loop, macros::map,
    maps::Array,
};
use podtrace_common::{
    FilterInsn, FILTER_DIRECT_MAX, FILTER_MEMWORDS, MAX_FILTER_INSNS, VLAN_TAG_LEN, VLAN_TAG_OFFSET,
};

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

/// Most instructions one run may execute. Forward-only programs (all but
/// `protochain`'s) end long before, at a RET or at the end of the map. A
/// `protochain` loop moves at least 8 bytes into the packet per pass of at
/// most a few dozen instructions, so a 64 KiB packet needs fewer than
/// 8192 * 32 = 2^18 steps; the budget is 4 times that. A program still
/// running when it runs out rejects the packet.
const MAX_STEPS: u32 = 1 << 20;

/// State of one run; lives on the TC program's stack and is handed to each
/// callback through `bpf_loop`'s context pointer.
#[repr(C)]
struct Vm {
    skb: *mut __sk_buff,
    /// The frame's length as written (`skb->len`, plus 4 with a tag put
    /// back), read once: the bound of every packet load (and `len`).
    len: u32,
    a: u32,
    x: u32,
    pc: u32,
    /// The filter's verdict: 0 rejects, otherwise bytes to keep.
    ret: u32,
    mem: [u32; FILTER_MEMWORDS as usize],
    /// With a tag put back: frame bytes 8..12, 12..16 (the tag) and
    /// 16..20, big-endian words (see [`near_tag`]). Right after `mem`, so
    /// that one memset zeroes both; before `a`, it made the verifier's pass
    /// over the bpf_loop callback converge 15 times slower (~25 k processed
    /// instructions became ~450 k).
    near_tag: [u32; 3],
}

/// Runs the program in `FILTER` on the packet, with `tag` (from the skb's
/// metadata, 0 for none) put back at offset 12; returns the filter's
/// verdict (0: not wanted).
#[inline(always)]
pub fn run(skb: *mut __sk_buff, len: u32, tag: u32) -> u32 {
    let mut vm = Vm {
        skb,
        len: if tag != 0 { len + VLAN_TAG_LEN } else { len },
        a: 0,
        x: 0,
        pc: 0,
        ret: 0,
        mem: [0; FILTER_MEMWORDS as usize],
        near_tag: [0; 3],
    };
    if tag != 0 {
        vm.near_tag = near_tag(skb, tag);
    }
    // Every path ends at a RET, at a pc past the program (the map holds
    // exactly the program), or when the budget runs out: all but the first
    // leave `ret` at 0, rejecting.
    // SAFETY: `step` matches bpf_loop's callback signature and `vm` outlives
    // the call.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            if tag == 0 {
                step::<false> as *const () as *mut c_void
            } else {
                step::<true> as *const () as *mut c_void
            },
            (&mut vm as *mut Vm).cast(),
            0,
        );
    }
    vm.ret
}

/// One instruction. Returns 0 to go on, 1 to stop (with `vm.ret` set).
/// `TAGGED`: the packet has a tag put back. Two callbacks rather than a
/// test of `vm.tag` in every load: that test alone made every interpreted
/// instruction slower (register pressure in `exec`), tagged or not.
extern "C" fn step<const TAGGED: bool>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `&mut Vm` that `run` passed to bpf_loop.
    let vm = unsafe { &mut *ctx.cast::<Vm>() };
    match exec::<TAGGED>(vm) {
        Ok(()) => 0,
        Err(verdict) => {
            vm.ret = verdict;
            1
        }
    }
}

/// Executes the instruction at `vm.pc`; `Err(verdict)` ends the program.
#[inline(always)]
fn exec<const TAGGED: bool>(vm: &mut Vm) -> Result<(), u32> {
    let insn = *FILTER.get(vm.pc).ok_or(0u32)?;
    vm.pc += 1;
    let (code, k) = (insn.code, insn.k);
    match code & 0x07 {
        LD => {
            vm.a = match code & 0xe0 {
                IMM => k,
                ABS => load::<TAGGED>(vm, k, code & 0x18)?,
                IND => load::<TAGGED>(vm, vm.x.checked_add(k).ok_or(0u32)?, code & 0x18)?,
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
                MSH => (load::<TAGGED>(vm, k, B)? & 0xf) << 2,
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
                    // JA: an unconditional jump by k, signed (`protochain`
                    // jumps back); out of range rejects at the next fetch.
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

/// A big-endian load of `size` (W, H or B) bytes at offset `off` of the
/// frame as written.
#[inline(always)]
fn load<const TAGGED: bool>(vm: &Vm, off: u32, size: u16) -> Result<u32, u32> {
    if TAGGED {
        return u32::try_from(tagged_load(vm, off, size)).map_err(|_| 0);
    }
    match size {
        W => bytes::<4>(vm, off).map(u32::from_be_bytes),
        H => bytes::<2>(vm, off).map(|b| u32::from(u16::from_be_bytes(b))),
        B => bytes::<1>(vm, off).map(|b| u32::from(b[0])),
        _ => Err(0),
    }
}

/// [`load`] on a frame with a tag put back; -1 rejects.
#[inline(never)]
fn tagged_load(vm: &Vm, off: u32, size: u16) -> i64 {
    let n = match size {
        W => 4,
        H => 2,
        B => 1,
        _ => return -1,
    };
    if off > vm.len || vm.len - off < n {
        return -1;
    }
    let after_tag = VLAN_TAG_OFFSET + VLAN_TAG_LEN;
    let at = if off + n <= VLAN_TAG_OFFSET {
        off
    } else if off >= after_tag {
        off - VLAN_TAG_LEN
    } else {
        return i64::from(vm.across_tag(off, n));
    };
    let value = match size {
        W => bytes::<4>(vm, at).map(u32::from_be_bytes),
        H => bytes::<2>(vm, at).map(|b| u32::from(u16::from_be_bytes(b))),
        _ => bytes::<1>(vm, at).map(|b| u32::from(b[0])),
    };
    value.map_or(-1, i64::from)
}

impl Vm {
    /// A load of `n` bytes at `off` that touches the tag put back
    /// (9 <= off < 16, within the frame), from `near_tag`.
    #[inline(always)]
    fn across_tag(&self, off: u32, n: u32) -> u32 {
        let [before, tag, after] = self.near_tag.map(u64::from);
        // Bytes 8..16, or 12..20 when the load ends past 16.
        let (window, end) = if off + n <= 16 {
            ((before << 32) | tag, 16)
        } else {
            ((tag << 32) | after, 20)
        };
        let value = (window >> (8 * (end - off - n))) as u32;
        if n == 4 {
            value
        } else {
            value & ((1 << (8 * n)) - 1)
        }
    }
}

/// Frame bytes 8..12, the tag, and frame bytes 16..20 (the skb's 12..16;
/// fewer, then zeros, in a frame shorter than 20 bytes: `load` never reads
/// past the frame), as big-endian words.
#[inline(always)]
fn near_tag(skb: *mut __sk_buff, tag: u32) -> [u32; 3] {
    let mut before = [0u8; 4];
    let mut after = [0u8; 4];
    // SAFETY: `skb` is the program's context; the buffers hold 4 bytes.
    unsafe {
        let ctx = skb as *const c_void;
        bpf_skb_load_bytes(ctx, 8, before.as_mut_ptr().cast(), 4);
        if bpf_skb_load_bytes(ctx, VLAN_TAG_OFFSET, after.as_mut_ptr().cast(), 4) < 0 {
            bpf_skb_load_bytes(ctx, VLAN_TAG_OFFSET, after.as_mut_ptr().cast(), 2);
        }
    }
    [u32::from_be_bytes(before), tag, u32::from_be_bytes(after)]
}

/// The `N` bytes at offset `off` of the skb, within `vm.len`.
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
    if direct < FILTER_DIRECT_MAX as usize {
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
