//! Packet loads of the translated filter, on the frame as podtrace writes it.
//!
//! When the skb's metadata holds the frame's outer VLAN tag, the written
//! frame has it back at offset 12 (`podtrace_common::VLAN_TAG_LEN`), so a
//! load of frame offset `off`:
//! - ending by byte 12 reads the skb at `off` (the MAC addresses);
//! - starting at byte 16 or later reads the skb at `off - 4`: always
//!   `off - r9`, with r9 = 4 or 0, so untagged packets pay one subtraction;
//! - touching bytes 12..16 reads the tag from the metadata (loads within
//!   it, like `ldh [12]`, inline; the few that straddle its edges through
//!   [`Translator::across_tag_subprogram`]).
//!
//! Checks of "is there a tag" read `vlan_present` afresh rather than test
//! r9, so the verifier keeps r9's range {0, 4} on both paths and does not
//! verify the rest of the program once per value.

use super::*;

impl Translator {
    /// `dst` = 4 with a tag in the skb's metadata, else 0.
    pub(super) fn tag_len(&mut self, dst: u8) {
        self.load_u32(dst, SKB, SKB_VLAN_PRESENT);
        self.emit(ALU | AND, dst, 0, 0, 1);
        self.emit(ALU | LSH, dst, 0, 0, 2);
    }

    /// `dst` = the tag as on the wire, TPID << 16 | TCI; clobbers `scratch`.
    fn tag_word(&mut self, dst: u8, scratch: u8) {
        // vlan_proto is the kernel's __be16, read as is.
        self.load_u32(dst, SKB, SKB_VLAN_PROTO);
        self.swap_to_host(dst, 2);
        self.emit(ALU | LSH, dst, 0, 0, 16);
        self.load_u32(scratch, SKB, SKB_VLAN_TCI);
        self.emit(ALU | 0x40 | SRC_X, dst, scratch, 0, 0); // OR
    }

    /// `dst` = the big-endian byte, half-word or word at the frame offset.
    pub(super) fn load_packet(&mut self, offset: Offset, size: u8, dst: u8) {
        let bytes: u32 = match size {
            0x00 => 4,
            0x08 => 2,
            0x10 => 1,
            _ => return self.jump(Label::Reject),
        };
        // No packet is 2 GiB.
        let limit = 0x7fff_ffff - bytes;
        match offset {
            Offset::Abs(k) if k > limit => self.jump(Label::Reject),
            Offset::Abs(k) if k + bytes <= 12 => self.load_at(At::Const(k), size, dst),
            Offset::Abs(k) if k >= 16 => {
                self.mov32_k(R5, k);
                self.emit(ALU64 | 0x10 | SRC_X, R5, TAG_LEN, 0, 0); // SUB
                self.load_at(At::R5 { max: k }, size, dst);
            }
            Offset::Abs(k) => {
                let tagged = self.new_label();
                let done = self.new_label();
                self.load_u32(R0, SKB, SKB_VLAN_PRESENT);
                self.jump_if_k(JNE, R0, 0, tagged);
                self.load_at(At::Const(k), size, dst);
                self.jump(done);
                self.bind(tagged);
                if k >= 12 && k + bytes <= 16 {
                    // Within the tag.
                    self.tag_word(dst, R0);
                    let shift = 8 * (16 - k - bytes);
                    if shift > 0 {
                        self.emit(ALU | 0x70, dst, 0, 0, shift as i32); // RSH
                    }
                    if bytes < 4 && k > 12 {
                        self.emit(ALU | AND, dst, 0, 0, ((1u64 << (8 * bytes)) - 1) as i32);
                    }
                } else {
                    self.mov32_k(R2, k);
                    self.call_across_tag(bytes, dst);
                }
                self.bind(done);
            }
            Offset::Ind(k) if k >= 16 => {
                // X + k >= 16 too (r5 holds it in 64 bits): past the tag.
                self.mov32_k(R5, k);
                self.emit(ALU64 | ADD | SRC_X, R5, X, 0, 0);
                self.jump_with(JMP | JGT, R5, 0, limit as i32, Label::Reject);
                self.emit(ALU64 | 0x10 | SRC_X, R5, TAG_LEN, 0, 0); // SUB
                self.load_at(At::R5 { max: limit }, size, dst);
            }
            Offset::Ind(k) => {
                let low = self.new_label();
                let plain = self.new_label();
                let done = self.new_label();
                self.mov32_k(R5, k);
                self.emit(ALU64 | ADD | SRC_X, R5, X, 0, 0);
                self.jump_with(JMP | JGT, R5, 0, limit as i32, Label::Reject);
                self.jump_with(JMP | JLT, R5, 0, 16, low);
                self.emit(ALU64 | 0x10 | SRC_X, R5, TAG_LEN, 0, 0); // SUB
                self.bind(plain);
                self.load_at(At::R5 { max: limit }, size, dst);
                self.jump(done);
                // Below 16: as is without a tag or when wholly before it.
                self.bind(low);
                self.load_u32(R0, SKB, SKB_VLAN_PRESENT);
                self.jump_if_k(JEQ, R0, 0, plain);
                self.jump_with(JMP | JLE, R5, 0, (12 - bytes) as i32, plain);
                self.emit(ALU64 | MOV | SRC_X, R2, R5, 0, 0);
                self.call_across_tag(bytes, dst);
                self.bind(done);
            }
        }
    }

    /// `dst` = the `size` load at skb offset `at`, or reject.
    fn load_at(&mut self, at: At, size: u8, dst: u8) {
        let bytes: u32 = match size {
            0x00 => 4,
            0x08 => 2,
            _ => 1,
        };
        let slow = self.new_label();
        let done = self.new_label();
        let direct_max = self.opts.direct_max;
        let direct = match at {
            At::Const(k) => k + bytes <= direct_max,
            At::R5 { max } if direct_max > bytes => {
                if max > direct_max - bytes {
                    self.jump_with(JMP | JGT, R5, 0, (direct_max - bytes) as i32, slow);
                }
                true
            }
            At::R5 { .. } => false,
        };
        if direct {
            self.load_u32(R2, SKB, SKB_DATA);
            self.load_u32(R3, SKB, SKB_DATA_END);
            match at {
                At::Const(k) => self.emit(ALU64 | ADD, R2, 0, 0, k as i32),
                At::R5 { .. } => self.emit(ALU64 | ADD | SRC_X, R2, R5, 0, 0),
            }
            self.emit(ALU64 | MOV | SRC_X, R4, R2, 0, 0);
            self.emit(ALU64 | ADD, R4, 0, 0, bytes as i32);
            // The `ptr + n > end` form the verifier learns the range from.
            self.jump_with(JMP | JGT | SRC_X, R4, R3, 0, slow);
            self.emit(LDX | MEM | size, dst, R2, 0, 0);
            self.swap_to_host(dst, bytes);
            self.jump(done);
        }
        self.bind(slow);
        self.emit(ALU64 | MOV | SRC_X, R1, SKB, 0, 0);
        match at {
            At::Const(k) => self.mov32_k(R2, k),
            At::R5 { .. } => self.emit(ALU64 | MOV | SRC_X, R2, R5, 0, 0),
        }
        self.emit(ALU64 | MOV | SRC_X, R3, FP, 0, 0);
        self.emit(ALU64 | ADD, R3, 0, 0, i32::from(LOAD_BUF));
        self.mov32_k(R4, bytes);
        self.call(HELPER_SKB_LOAD_BYTES);
        self.jump_with(JMP | JNE, R0, 0, 0, Label::Reject);
        self.emit(LDX | MEM | size, dst, FP, LOAD_BUF, 0);
        self.swap_to_host(dst, bytes);
        self.bind(done);
    }

    /// Network to host order (`be16`/`be32`, which also clear the upper bits;
    /// a no-op on big-endian hosts, where the load already was right).
    fn swap_to_host(&mut self, reg: u8, bytes: u32) {
        if bytes > 1 {
            self.emit(ALU | END_TO_BE, reg, 0, 0, (bytes * 8) as i32);
        }
    }

    /// `dst` = the `bytes` at frame offset r2, which touch the tag, or reject.
    fn call_across_tag(&mut self, bytes: u32, dst: u8) {
        self.emit(ALU64 | MOV | SRC_X, R1, SKB, 0, 0);
        self.mov32_k(R3, bytes);
        self.calls.push((self.out.len(), Label::AcrossTag));
        self.emit(JMP | CALL, 0, PSEUDO_CALL, 0, 0);
        self.jump_with(JMP | JSLT, R0, 0, 0, Label::Reject);
        self.emit(ALU | MOV | SRC_X, dst, R0, 0, 0);
    }

    /// The function [`call_across_tag`](Self::call_across_tag) calls, after
    /// the program, if anything calls it: r0 = the r3 (1, 2 or 4) bytes at
    /// frame offset r2 (< 16) of skb r1, assembled byte by byte, or -1 past
    /// the frame's end. Rare enough (a load at 9..16 of a tagged frame) that
    /// one shared copy serves every load.
    pub(super) fn across_tag_subprogram(&mut self) {
        if self.calls.is_empty() {
            return;
        }
        let fail = self.new_label();
        let out = self.new_label();
        self.bind(Label::AcrossTag);
        // Its own frame: r6-r9 are saved for the caller.
        let (skb, off, left, value) = (6, 7, 8, 9);
        self.emit(ALU64 | MOV | SRC_X, skb, R1, 0, 0);
        self.emit(ALU64 | MOV | SRC_X, off, R2, 0, 0);
        self.emit(ALU64 | MOV | SRC_X, left, R3, 0, 0);
        // Within the frame: off + n <= skb->len + 4.
        self.load_u32(R1, skb, SKB_LEN);
        self.emit(ALU64 | ADD, R1, 0, 0, 4);
        self.emit(ALU64 | MOV | SRC_X, R2, off, 0, 0);
        self.emit(ALU64 | ADD | SRC_X, R2, left, 0, 0);
        self.jump_with(JMP | JGT | SRC_X, R2, R1, 0, fail);
        self.mov32_k(value, 0);
        for _ in 0..4 {
            let (load, tag, next) = (self.new_label(), self.new_label(), self.new_label());
            self.jump_if_k(JEQ, left, 0, out);
            self.emit(ALU64 | MOV | SRC_X, R2, off, 0, 0);
            self.jump_with(JMP | JLT, off, 0, 12, load);
            self.jump_with(JMP | JLT, off, 0, 16, tag);
            self.emit(ALU64 | ADD, R2, 0, 0, -4);
            self.bind(load);
            self.emit(ALU64 | MOV | SRC_X, R1, skb, 0, 0);
            self.emit(ALU64 | MOV | SRC_X, R3, FP, 0, 0);
            self.emit(ALU64 | ADD, R3, 0, 0, -8);
            self.mov32_k(R4, 1);
            self.call(HELPER_SKB_LOAD_BYTES);
            self.jump_with(JMP | JNE, R0, 0, 0, fail);
            self.emit(LDX | MEM | 0x10, R0, FP, -8, 0);
            self.jump(next);
            // Tag byte off - 12: (tag >> 8 * (15 - off)) & 0xff.
            self.bind(tag);
            self.emit(ALU64 | MOV | SRC_X, R1, skb, 0, 0);
            self.load_u32(R0, R1, SKB_VLAN_PROTO);
            self.swap_to_host(R0, 2);
            self.emit(ALU | LSH, R0, 0, 0, 16);
            self.load_u32(R2, R1, SKB_VLAN_TCI);
            self.emit(ALU | 0x40 | SRC_X, R0, R2, 0, 0); // OR
            self.mov32_k(R1, 15);
            self.emit(ALU64 | 0x10 | SRC_X, R1, off, 0, 0); // SUB
            self.emit(ALU64 | LSH, R1, 0, 0, 3);
            self.emit(ALU64 | 0x70 | SRC_X, R0, R1, 0, 0); // RSH
            self.emit(ALU64 | AND, R0, 0, 0, 0xff);
            self.bind(next);
            self.emit(ALU64 | LSH, value, 0, 0, 8);
            self.emit(ALU64 | 0x40 | SRC_X, value, R0, 0, 0); // OR
            self.emit(ALU64 | ADD, off, 0, 0, 1);
            self.emit(ALU64 | ADD, left, 0, 0, -1);
        }
        self.bind(out);
        self.emit(ALU64 | MOV | SRC_X, R0, value, 0, 0);
        self.emit(JMP | EXIT, 0, 0, 0, 0);
        self.bind(fail);
        self.emit(ALU64 | MOV, R0, 0, 0, -1);
        self.emit(JMP | EXIT, 0, 0, 0, 0);
    }
}

/// Where a load reads in the skb.
#[derive(Debug, Clone, Copy)]
enum At {
    Const(u32),
    /// The offset in r5, at most `max`.
    R5 {
        max: u32,
    },
}
