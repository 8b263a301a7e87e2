//! Classic BPF → native eBPF: the compiled tcpdump filter becomes a small TC
//! program of its own that runs in front of the capture programs and
//! tail-calls them only for packets it accepts.
//!
//! Why translate when the capture programs carry an interpreter: the
//! translation is JIT-compiled to native code, where the interpreter pays a
//! `bpf_loop` callback, a map lookup and a `match` per instruction;
//! BENCHMARKS.md, table 5c, has what each costs. The interpreter stays as the fallback
//! for programs the verifier refuses, that are too big to translate (jumps
//! are 16-bit, so past ~30 k eBPF instructions), or that loop: libpcap
//! compiles `protochain` into a backward jump, which this translation
//! refuses ([`TranslateError::Loops`]) rather than unroll.
//!
//! Semantics are libpcap's `bpf_filter()`, as in the interpreter: packet
//! loads are bounds-checked against the whole packet (`skb->len`), reading
//! the linear head directly and the rest with `bpf_skb_load_bytes`; an
//! out-of-bounds load, a division by zero or an unknown instruction rejects
//! the packet; shifts by 32 or more give 0; `M[]` and `A`/`X` start at 0.
//! Any non-zero return accepts (the capture programs apply the snap length).
//! The packet is the frame podtrace writes, with an outer VLAN tag held in
//! skb metadata put back at offset 12 (see [`load`] for how loads find it).
//!
//! Register use: r6 the skb, r7 `A`, r8 `X`, r9 the tag's length in the
//! frame (4 with a tag put back, else 0) (all kept across calls), r1-r5
//! scratch. Stack: the counter key at -8, the slow-load buffer at -16,
//! `M[0..16]` below that.

use podtrace_common::{
    FilterInsn, COUNTER_FILTERED, COUNTER_LOST, COUNTER_PASSED, FILTER_MEMWORDS,
};

mod load;

/// One eBPF instruction, `struct bpf_insn`: registers packed dst (low
/// nibble) and src (high nibble), as on a little-endian host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Map file descriptors the translated program refers to.
#[derive(Debug, Clone, Copy)]
pub struct Maps {
    /// `BPF_MAP_TYPE_PROG_ARRAY` holding the capture programs.
    pub capture: i32,
    /// The per-CPU counters (`COUNTERS`).
    pub counters: i32,
}

/// How to translate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Slot of `Maps::capture` to tail-call for accepted packets.
    pub slot: u32,
    /// Slot to tail-call for rejected packets (a program that counts them).
    pub rejected: u32,
    /// Packet offsets up to this are read from the linear head when it holds
    /// them (`podtrace_common::FILTER_DIRECT_MAX`); 0 sends every load
    /// through `bpf_skb_load_bytes` (tests).
    pub direct_max: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("the translated program needs a jump of {0} instructions (at most 32767)")]
    TooLarge(i64),
    #[error("the filter loops (instruction {0} jumps back, as `protochain` compiles); only the interpreter runs loops")]
    Loops(usize),
}

/// Translates `filter` (non-empty, as libpcap emits it).
pub fn translate(
    filter: &[FilterInsn],
    maps: Maps,
    opts: Options,
) -> Result<Vec<Insn>, TranslateError> {
    // `ja` is the only jump with a wide offset, and libpcap's bpf_filter()
    // takes it as signed.
    if let Some(pc) = filter
        .iter()
        .position(|i| i.code == 0x05 && (i.k as i32) < 0)
    {
        return Err(TranslateError::Loops(pc));
    }
    let mut t = Translator::new(filter.len(), maps, opts);
    t.prologue(filter);
    // The verifier refuses unreachable code: skip what no path reaches.
    let reachable = reachable(filter);
    let mut falls_through = true;
    for (pc, insn) in filter.iter().enumerate() {
        t.bind(Label::Insn(pc));
        if reachable[pc] {
            t.insn(pc, *insn);
            falls_through = !matches!(insn.code & 0x07, 0x06) && insn.code != 0x05;
        }
    }
    // Running off the end rejects (libpcap never emits such programs).
    if falls_through {
        t.jump(Label::Reject);
    }
    t.epilogue();
    t.across_tag_subprogram();
    t.finish()
}

/// Which classic instructions some path from the first one reaches
/// (jumps only go forward, as checked before, so one pass suffices).
fn reachable(filter: &[FilterInsn]) -> Vec<bool> {
    let mut seen = vec![false; filter.len()];
    if let Some(first) = seen.first_mut() {
        *first = true;
    }
    for pc in 0..filter.len() {
        if !seen[pc] {
            continue;
        }
        let i = filter[pc];
        let mut mark = |n: usize| {
            if let Some(s) = (pc + 1).checked_add(n).and_then(|t| seen.get_mut(t)) {
                *s = true;
            }
        };
        match (i.code & 0x07, i.code & 0xf0) {
            (0x06, _) => {}
            (0x05, 0x00) => mark(i.k as usize),
            (0x05, _) => {
                mark(usize::from(i.jt));
                mark(usize::from(i.jf));
            }
            _ => mark(0),
        }
    }
    seen
}

// eBPF opcode fields (<linux/bpf.h>, <linux/bpf_common.h>).
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const SRC_X: u8 = 0x08;
const W: u8 = 0x00;
const DW: u8 = 0x18;
const MOV: u8 = 0xb0;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const NEG: u8 = 0x80;
const END_TO_BE: u8 = 0xd8;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const JLT: u8 = 0xa0;
const JLE: u8 = 0xb0;
const JSLT: u8 = 0xc0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
/// `src` of a call to a function of the program itself (imm: its offset).
const PSEUDO_CALL: u8 = 1;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_TAIL_CALL: i32 = 12;
const HELPER_SKB_LOAD_BYTES: i32 = 26;

// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_VLAN_PROTO: i16 = 28;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

const TCX_NEXT: i32 = -1;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const SKB: u8 = 6;
const A: u8 = 7;
const X: u8 = 8;
/// 4 when the skb's metadata holds a VLAN tag put back in the frame, else 0.
const TAG_LEN: u8 = 9;
const FP: u8 = 10;

const KEY_SLOT: i16 = -8;
const LOAD_BUF: i16 = -16;

/// Stack offset of `M[k]`.
fn mem_slot(k: u32) -> i16 {
    LOAD_BUF - 4 * (k as i16 + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The start of classic instruction n.
    Insn(usize),
    Accept,
    Reject,
    /// A label inside one instruction's translation.
    Local(usize),
    /// The function that loads across a VLAN tag (`load::across_tag_subprogram`).
    AcrossTag,
}

/// Where a packet load's offset comes from.
#[derive(Debug, Clone, Copy)]
enum Offset {
    Abs(u32),
    /// `X + k`.
    Ind(u32),
}

struct Translator {
    out: Vec<Insn>,
    /// Positions of `Label::Insn(0..len)`.
    insn_pos: Vec<Option<usize>>,
    accept: Option<usize>,
    reject: Option<usize>,
    local: Vec<Option<usize>>,
    across_tag: Option<usize>,
    /// (instruction index, target) of every jump, patched by `finish`.
    fixups: Vec<(usize, Label)>,
    /// The same for calls of [`Label::AcrossTag`] (their offset is in `imm`).
    calls: Vec<(usize, Label)>,
    maps: Maps,
    opts: Options,
}

impl Translator {
    fn new(len: usize, maps: Maps, opts: Options) -> Self {
        Self {
            out: Vec::with_capacity(len * 6 + 64),
            insn_pos: vec![None; len],
            accept: None,
            reject: None,
            local: Vec::new(),
            across_tag: None,
            fixups: Vec::new(),
            calls: Vec::new(),
            maps,
            opts,
        }
    }

    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.out.push(Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        });
    }

    fn new_label(&mut self) -> Label {
        self.local.push(None);
        Label::Local(self.local.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        let here = Some(self.out.len());
        match label {
            Label::Insn(n) => self.insn_pos[n] = here,
            Label::Accept => self.accept = here,
            Label::Reject => self.reject = here,
            Label::Local(n) => self.local[n] = here,
            Label::AcrossTag => self.across_tag = here,
        }
    }

    /// A jump (`code` with `JA` for an unconditional one) to `label`.
    fn jump_with(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: Label) {
        self.fixups.push((self.out.len(), label));
        self.emit(code, dst, src, 0, imm);
    }

    fn jump(&mut self, label: Label) {
        self.jump_with(JMP | JA, 0, 0, 0, label);
    }

    /// 32-bit `if A <op> k goto label`.
    fn jump_if_k(&mut self, op: u8, reg: u8, k: u32, label: Label) {
        self.jump_with(JMP32 | op, reg, 0, k as i32, label);
    }

    fn mov32_k(&mut self, dst: u8, k: u32) {
        self.emit(ALU | MOV, dst, 0, 0, k as i32);
    }

    fn load_u32(&mut self, dst: u8, base: u8, off: i16) {
        self.emit(LDX | MEM | W, dst, base, off, 0);
    }

    fn ld_map_fd(&mut self, dst: u8, fd: i32) {
        self.emit(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd);
        self.emit(0, 0, 0, 0, 0);
    }

    fn call(&mut self, helper: i32) {
        self.emit(JMP | CALL, 0, 0, 0, helper);
    }

    fn prologue(&mut self, filter: &[FilterInsn]) {
        self.emit(ALU64 | MOV | SRC_X, SKB, R1, 0, 0);
        self.mov32_k(A, 0);
        self.mov32_k(X, 0);
        // M[] starts zeroed, as in the interpreter; only slots read matter.
        let mut read = [false; FILTER_MEMWORDS as usize];
        for i in filter {
            let is_mem_load = matches!(i.code, 0x60 | 0x61); // LD|MEM, LDX|MEM
            if is_mem_load && i.k < FILTER_MEMWORDS {
                read[i.k as usize] = true;
            }
        }
        for (k, _) in read.iter().enumerate().filter(|(_, r)| **r) {
            self.emit(ST | MEM | W, FP, 0, mem_slot(k as u32), 0);
        }
        // Packet and length loads see the frame with a tag put back.
        let reads_packet = filter.iter().any(|i| {
            matches!(i.code & 0x07, 0x00 | 0x01)
                && matches!(i.code & 0xe0, 0x20 | 0x40 | 0x80 | 0xa0)
        });
        if reads_packet {
            self.tag_len(TAG_LEN);
        }
    }

    fn insn(&mut self, pc: usize, i: FilterInsn) {
        let k = i.k;
        let next = |n: u8| Label::Insn(pc + 1 + usize::from(n));
        // Classic opcodes fit in a byte; anything else is unknown.
        let Ok(code) = u8::try_from(i.code) else {
            return self.jump(Label::Reject);
        };
        match code & 0x07 {
            // LD, LDX
            0x00 | 0x01 => {
                let dst = if code & 0x07 == 0 { A } else { X };
                match (code & 0xe0, code & 0x18) {
                    (0x00, _) => self.mov32_k(dst, k),
                    (0x20, size) if dst == A => self.load_packet(Offset::Abs(k), size, A),
                    (0x40, size) if dst == A => self.load_packet(Offset::Ind(k), size, A),
                    (0x60, _) if k < FILTER_MEMWORDS => self.load_u32(dst, FP, mem_slot(k)),
                    (0x80, _) => {
                        self.load_u32(dst, SKB, SKB_LEN);
                        self.emit(ALU | ADD | SRC_X, dst, TAG_LEN, 0, 0);
                    }
                    (0xa0, 0x10) if dst == X => {
                        // X = 4 * (P[k] & 0xf), the IPv4 header length.
                        self.load_packet(Offset::Abs(k), 0x10, X);
                        self.emit(ALU | AND, X, 0, 0, 0xf);
                        self.emit(ALU | LSH, X, 0, 0, 2);
                    }
                    _ => self.jump(Label::Reject),
                }
            }
            // ST, STX
            0x02 | 0x03 if k < FILTER_MEMWORDS => {
                let src = if code & 0x07 == 0x02 { A } else { X };
                self.emit(STX | MEM | W, FP, src, mem_slot(k), 0);
            }
            0x04 => self.alu(code, k),
            0x05 => {
                let op = code & 0xf0;
                if op == 0x00 {
                    // JA: k may be any u32; out of range rejects.
                    let target = (pc + 1).checked_add(k as usize);
                    let label = match target {
                        Some(t) if t < self.insn_pos.len() => Label::Insn(t),
                        _ => Label::Reject,
                    };
                    self.jump(label);
                } else if matches!(op, 0x10 | 0x20 | 0x30 | 0x40) {
                    self.cond_jump(code, k, pc, next(i.jt), next(i.jf));
                } else {
                    self.jump(Label::Reject);
                }
            }
            // RET: K or A; non-zero accepts.
            0x06 => match code & 0x18 {
                0x00 if k != 0 => self.jump(Label::Accept),
                0x10 => {
                    self.jump_if_k(JEQ, A, 0, Label::Reject);
                    self.jump(Label::Accept);
                }
                _ => self.jump(Label::Reject),
            },
            0x07 => match code & 0xf8 {
                0x00 => self.emit(ALU | MOV | SRC_X, X, A, 0, 0), // TAX
                0x80 => self.emit(ALU | MOV | SRC_X, A, X, 0, 0), // TXA
                _ => self.jump(Label::Reject),
            },
            _ => self.jump(Label::Reject),
        }
    }

    fn alu(&mut self, code: u8, k: u32) {
        let op = code & 0xf0;
        let by_x = code & SRC_X != 0;
        match op {
            // ADD SUB MUL OR AND XOR: the same opcodes in eBPF, on 32 bits.
            0x00 | 0x10 | 0x20 | 0x40 | 0x50 | 0xa0 if by_x => {
                self.emit(ALU | op | SRC_X, A, X, 0, 0)
            }
            0x00 | 0x10 | 0x20 | 0x40 | 0x50 | 0xa0 => self.emit(ALU | op, A, 0, 0, k as i32),
            0x80 => self.emit(ALU | NEG, A, 0, 0, 0),
            // DIV MOD: by zero rejects.
            0x30 | 0x90 if by_x => {
                self.jump_if_k(JEQ, X, 0, Label::Reject);
                self.emit(ALU | op | SRC_X, A, X, 0, 0);
            }
            0x30 | 0x90 if k == 0 => self.jump(Label::Reject),
            0x30 | 0x90 => self.emit(ALU | op, A, 0, 0, k as i32),
            // LSH RSH: 32 or more gives 0 (eBPF would mask the amount).
            0x60 | 0x70 if by_x => {
                let wide = self.new_label();
                let done = self.new_label();
                self.jump_if_k(JGT, X, 31, wide);
                self.emit(ALU | op | SRC_X, A, X, 0, 0);
                self.jump(done);
                self.bind(wide);
                self.mov32_k(A, 0);
                self.bind(done);
            }
            0x60 | 0x70 if k >= 32 => self.mov32_k(A, 0),
            0x60 | 0x70 => self.emit(ALU | op, A, 0, 0, k as i32),
            _ => self.jump(Label::Reject),
        }
    }

    /// `if A <op> (k|X) goto jt else goto jf`, falling through when one of
    /// them is the next instruction.
    fn cond_jump(&mut self, code: u8, k: u32, pc: usize, jt: Label, jf: Label) {
        let op = code & 0xf0;
        let src = code & SRC_X;
        let next = Label::Insn(pc + 1);
        let jt = self.clamp(jt);
        let jf = self.clamp(jf);
        if jt == jf {
            if jt != next {
                self.jump(jt);
            }
            return;
        }
        // Swap the targets when the true one is the fallthrough and the
        // condition has an inverse (JSET has none).
        let inverse = match op {
            0x10 => Some(JNE),
            0x20 => Some(0xb0), // JLE
            0x30 => Some(0xa0), // JLT
            _ => None,
        };
        let (op, taken, other) = match inverse {
            Some(inv) if jt == next => (inv, jf, jt),
            _ => (op, jt, jf),
        };
        if src == SRC_X {
            self.jump_with(JMP32 | op | SRC_X, A, X, 0, taken);
        } else {
            self.jump_if_k(op, A, k, taken);
        }
        if other != next {
            self.jump(other);
        }
    }

    /// Targets past the end reject.
    fn clamp(&self, label: Label) -> Label {
        match label {
            Label::Insn(n) if n >= self.insn_pos.len() => Label::Reject,
            l => l,
        }
    }

    /// Bumps per-CPU counter `index` of the unattributed slot (0).
    fn count(&mut self, index: u32) {
        let skip = self.new_label();
        self.emit(ST | MEM | W, FP, 0, KEY_SLOT, index as i32);
        self.ld_map_fd(R1, self.maps.counters);
        self.emit(ALU64 | MOV | SRC_X, R2, FP, 0, 0);
        self.emit(ALU64 | ADD, R2, 0, 0, i32::from(KEY_SLOT));
        self.call(HELPER_MAP_LOOKUP_ELEM);
        self.jump_with(JMP | JEQ, R0, 0, 0, skip);
        self.emit(LDX | MEM | DW, R1, R0, 0, 0);
        self.emit(ALU64 | ADD, R1, 0, 0, 1);
        self.emit(STX | MEM | DW, R0, R1, 0, 0);
        self.bind(skip);
    }

    /// Tail-calls slot `slot` of the capture program array.
    fn tail_call(&mut self, slot: u32) {
        self.emit(ALU64 | MOV | SRC_X, R1, SKB, 0, 0);
        self.ld_map_fd(R2, self.maps.capture);
        self.mov32_k(R3, slot);
        self.call(HELPER_TAIL_CALL);
    }

    fn exit_next(&mut self) {
        self.emit(ALU64 | MOV, R0, 0, 0, TCX_NEXT);
        self.emit(JMP | EXIT, 0, 0, 0, 0);
    }

    /// Accepted packets go on to the capture program and rejected ones to
    /// the program that counts them (`podtrace_rejected`, or its eth0
    /// twin), both of which count them in their link's slot.
    /// Either way the verdict is TCX_NEXT.
    fn epilogue(&mut self) {
        // The verifier refuses unreachable code: a filter that accepts
        // everything has no reject path, one that rejects everything no
        // accept path.
        let wanted = |t: &Self, label| t.fixups.iter().any(|(_, l)| *l == label);
        if wanted(self, Label::Accept) {
            self.bind(Label::Accept);
            self.tail_call(self.opts.slot);
            // Only reached if the tail call failed (never expected): the
            // packet is lost, counted without a link.
            self.count(COUNTER_PASSED);
            self.count(COUNTER_LOST);
            self.exit_next();
        }
        if wanted(self, Label::Reject) {
            self.bind(Label::Reject);
            self.tail_call(self.opts.rejected);
            self.count(COUNTER_FILTERED);
            self.exit_next();
        }
    }

    fn position(&self, label: Label) -> usize {
        match label {
            Label::Insn(n) => self.insn_pos[n],
            Label::Accept => self.accept,
            Label::Reject => self.reject,
            Label::Local(n) => self.local[n],
            Label::AcrossTag => self.across_tag,
        }
        .expect("every label is bound")
    }

    fn finish(mut self) -> Result<Vec<Insn>, TranslateError> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let off = self.position(label) as i64 - at as i64 - 1;
            self.out[at].off = i16::try_from(off).map_err(|_| TranslateError::TooLarge(off))?;
        }
        for (at, label) in std::mem::take(&mut self.calls) {
            // Fewer than 2^31 instructions: the jumps above would fail first.
            self.out[at].imm = (self.position(label) as i64 - at as i64 - 1) as i32;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests;
