//! An interpreter of the eBPF the translator emits, to run translated
//! programs in unit tests the way the kernel would (the verifier's rules
//! for what may be read included), and nothing else.

use podtrace_common::CAPTURE_SLOT_REJECTED;

use super::super::*;
use super::MAPS;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tail-called the capture program.
    Accept,
    /// Tail-called the program that counts rejected packets.
    Reject,
}

/// Pointers are tagged by region in their top 16 bits.
const CTX: u64 = 1 << 48;
const STACK: u64 = 2 << 48;
const PACKET: u64 = 3 << 48;
const COUNTER: u64 = 4 << 48;
const MAP: u64 = 5 << 48;
/// Bytes of one function's stack frame; the machine has two, for the
/// program and for a function it calls.
const FRAME: usize = 512;
const STACK_SIZE: usize = 2 * FRAME;

/// Runs the eBPF the translator emits, as the kernel would, and nothing
/// else: any other instruction, a read outside what the verifier would
/// allow, a division the kernel would do by zero or a shift it would mask
/// fails the test.
pub struct Machine<'a> {
    packet: &'a [u8],
    /// Bytes of the packet in the linear head (`data`..`data_end`).
    linear: usize,
    /// The VLAN tag in the skb's metadata (TPID, TCI), if any.
    tag: Option<(u16, u16)>,
    stack: [u8; STACK_SIZE],
    /// Where the running function's frame starts in `stack`.
    frame: usize,
    counters: [u64; 3],
}

impl<'a> Machine<'a> {
    pub fn new(packet: &'a [u8], linear: usize) -> Self {
        Self {
            packet,
            linear,
            tag: None,
            stack: [0; STACK_SIZE],
            frame: FRAME,
            counters: [0; 3],
        }
    }

    /// The skb's metadata holds the tag (`tpid`, `tci`), as the kernel
    /// keeps a received frame's outer tag; `packet` is the frame without it.
    pub fn with_tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tag = Some((tpid, tci));
        self
    }

    pub fn run(mut self, prog: &[Insn], slot: u32) -> Verdict {
        let mut r = [0u64; 11];
        r[1] = CTX;
        r[10] = STACK + STACK_SIZE as u64;
        let mut pc = 0;
        // (return pc, the caller's r6-r9) of the function running, if called.
        let mut called: Option<(usize, [u64; 4])> = None;
        for _ in 0..100_000 {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let (class, op) = (i.code & 0x07, i.code & 0xf0);
            pc += 1;
            match class {
                ALU | ALU64 => {
                    let b = if i.code & SRC_X != 0 {
                        r[src]
                    } else {
                        i.imm as i64 as u64
                    };
                    r[dst] = alu(class == ALU64, op, i, r[dst], b);
                }
                JMP | JMP32 if op == CALL && src == usize::from(PSEUDO_CALL) => {
                    // A function of the program: one level deep, its own
                    // frame, r6-r9 kept for the caller and unknown to it.
                    assert!(called.is_none(), "nested call");
                    let mut saved = [0; 4];
                    saved.copy_from_slice(&r[6..10]);
                    called = Some((pc, saved));
                    r[6..10].fill(0xdead);
                    self.frame = 0;
                    r[10] = STACK + FRAME as u64;
                    pc = (pc as i64 + i64::from(i.imm)) as usize;
                }
                JMP | JMP32 if op == EXIT && called.is_some() => {
                    let (back, saved) = called.take().unwrap();
                    r[6..10].copy_from_slice(&saved);
                    r[1..6].fill(0xdead);
                    self.frame = FRAME;
                    r[10] = STACK + STACK_SIZE as u64;
                    pc = back;
                }
                JMP | JMP32 if op == CALL => {
                    let (map, arg) = (r[2], r[3]);
                    match i.imm {
                        // A tail call that works does not come back: accepted
                        // packets go to the capture slot, rejected ones to the
                        // program that counts them.
                        HELPER_TAIL_CALL => {
                            assert_eq!(map, MAP | MAPS.capture as u64);
                            assert_eq!(self.counters[COUNTER_FILTERED as usize], 0);
                            if arg == u64::from(CAPTURE_SLOT_REJECTED) {
                                return Verdict::Reject;
                            }
                            assert_eq!(arg, u64::from(slot));
                            return Verdict::Accept;
                        }
                        HELPER_MAP_LOOKUP_ELEM => {
                            assert_eq!(r[1], MAP | MAPS.counters as u64);
                            let key = self.load(map, 4);
                            r[0] = COUNTER + key * 8;
                        }
                        HELPER_SKB_LOAD_BYTES => {
                            let (offset, len) = (r[2] as usize, r[4] as usize);
                            assert_eq!(r[1], CTX);
                            r[0] = match self.packet.get(offset..offset + len) {
                                Some(bytes) => {
                                    for (k, b) in bytes.iter().enumerate() {
                                        self.store(r[3] + k as u64, 1, u64::from(*b));
                                    }
                                    0
                                }
                                None => -14i64 as u64,
                            };
                        }
                        h => panic!("helper {h}"),
                    }
                    // Calls clobber r1-r5.
                    r[1..6].fill(0xdead);
                }
                // Only after a failed tail call (never modelled here).
                JMP | JMP32 if op == EXIT => panic!("exit without a tail call"),
                JMP | JMP32 => {
                    let b = if i.code & SRC_X != 0 {
                        r[src]
                    } else {
                        i.imm as i64 as u64
                    };
                    let (a, b) = if class == JMP32 {
                        (r[dst] & 0xffff_ffff, b & 0xffff_ffff)
                    } else {
                        (r[dst], b)
                    };
                    let taken = match op {
                        JA => true,
                        JEQ => a == b,
                        JGT => a > b,
                        0x30 => a >= b,
                        0x40 => a & b != 0,
                        JNE => a != b,
                        0xa0 => a < b,
                        0xb0 => a <= b,
                        0xc0 if class == JMP32 => (a as i32) < (b as i32),
                        0xc0 => (a as i64) < (b as i64),
                        _ => panic!("jump {:#x}", i.code),
                    };
                    if taken {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                _ if i.code == LD_IMM64 => {
                    assert_eq!(i.regs >> 4, PSEUDO_MAP_FD);
                    r[dst] = MAP | i.imm as u64;
                    pc += 1;
                }
                LDX => r[dst] = self.load(r[src].wrapping_add(i.off as i64 as u64), size(i.code)),
                ST => self.store(
                    r[dst].wrapping_add(i.off as i64 as u64),
                    size(i.code),
                    i.imm as u64,
                ),
                STX => self.store(
                    r[dst].wrapping_add(i.off as i64 as u64),
                    size(i.code),
                    r[src],
                ),
                _ => panic!("instruction {i:?}"),
            }
        }
        panic!("the program did not end")
    }

    fn load(&self, addr: u64, size: usize) -> u64 {
        let (region, at) = (addr & !((1 << 48) - 1), (addr & ((1 << 48) - 1)) as usize);
        let bytes: &[u8] = match region {
            CTX => {
                return match (at as i16, size) {
                    (SKB_LEN, 4) => self.packet.len() as u64,
                    (SKB_VLAN_PRESENT, 4) => u64::from(self.tag.is_some()),
                    (SKB_VLAN_TCI, 4) => u64::from(self.tag.map_or(0, |t| t.1)),
                    // The kernel's __be16, read as a native number.
                    (SKB_VLAN_PROTO, 4) => u64::from(u16::from_ne_bytes(
                        self.tag.map_or(0, |t| t.0).to_be_bytes(),
                    )),
                    (SKB_DATA, 4) => PACKET,
                    (SKB_DATA_END, 4) => PACKET + self.linear as u64,
                    other => panic!("context read {other:?}"),
                };
            }
            STACK => &self.stack[self.frame..self.frame + FRAME],
            PACKET => &self.packet[..self.linear],
            COUNTER => {
                assert_eq!((at % 8, size), (0, 8), "counter read");
                return self.counters[at / 8];
            }
            _ => panic!("read of {addr:#x}"),
        };
        let at = if region == STACK { at - self.frame } else { at };
        let b = bytes
            .get(at..at + size)
            .unwrap_or_else(|| panic!("read past the region at {addr:#x}"));
        b.iter().rev().fold(0, |v, b| v << 8 | u64::from(*b))
    }

    fn store(&mut self, addr: u64, size: usize, value: u64) {
        let (region, at) = (addr & !((1 << 48) - 1), (addr & ((1 << 48) - 1)) as usize);
        match region {
            STACK => {
                assert!(
                    at >= self.frame && at + size <= self.frame + FRAME,
                    "write outside the frame at {addr:#x}"
                );
                let b = &mut self.stack[at..at + size];
                for (k, byte) in b.iter_mut().enumerate() {
                    *byte = (value >> (8 * k)) as u8;
                }
            }
            COUNTER => {
                assert_eq!((at % 8, size), (0, 8), "counter write");
                self.counters[at / 8] = value;
            }
            _ => panic!("write to {addr:#x}"),
        }
    }
}

fn size(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

/// One ALU instruction on `a` and `b` (32-bit ones zero-extend).
fn alu(wide: bool, op: u8, i: Insn, a: u64, b: u64) -> u64 {
    if op == 0xd0 {
        // END: to big-endian, on this little-endian host a byte swap.
        assert!(!wide && i.code & SRC_X != 0, "{i:?}");
        return match i.imm {
            16 => u64::from((a as u16).swap_bytes()),
            32 => u64::from((a as u32).swap_bytes()),
            n => panic!("end {n}"),
        };
    }
    if !wide {
        let (a, b) = (a as u32, b as u32);
        let v = match op {
            ADD => a.wrapping_add(b),
            0x10 => a.wrapping_sub(b),
            0x20 => a.wrapping_mul(b),
            0x30 | 0x90 => {
                assert!(b != 0, "the kernel would divide by zero: {i:?}");
                if op == 0x30 {
                    a / b
                } else {
                    a % b
                }
            }
            0x40 => a | b,
            AND => a & b,
            LSH | 0x70 => {
                assert!(b < 32, "the kernel would mask this shift: {i:?}");
                if op == LSH {
                    a << b
                } else {
                    a >> b
                }
            }
            NEG => a.wrapping_neg(),
            0xa0 => a ^ b,
            MOV => b,
            _ => panic!("alu {i:?}"),
        };
        return u64::from(v);
    }
    match op {
        ADD => a.wrapping_add(b),
        0x10 => a.wrapping_sub(b),
        0x40 => a | b,
        AND => a & b,
        LSH | 0x70 => {
            assert!(b < 64, "the kernel would mask this shift: {i:?}");
            if op == LSH {
                a << b
            } else {
                a >> b
            }
        }
        MOV => b,
        _ => panic!("alu64 {i:?}"),
    }
}
