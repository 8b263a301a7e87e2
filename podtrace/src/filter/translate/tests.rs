//! The translated programs: their shape (what the verifier insists on),
//! and what they compute, run here by a small interpreter of the eBPF the
//! translator emits and compared with libpcap's own `bpf_filter()`. The
//! kernel runs them too, against libpcap, in the e2e suite's
//! `filter_engines::engines_match_libpcap`, and on real traffic against
//! tcpdump.

mod machine;

use std::time::Duration;

use podtrace_common::CAPTURE_SLOT_REJECTED;

use self::machine::{Machine, Verdict};
use super::*;
use crate::filter::{compile, Filter};

const MAPS: Maps = Maps {
    capture: 7,
    counters: 8,
};

fn opts() -> Options {
    Options {
        slot: 1,
        rejected: CAPTURE_SLOT_REJECTED,
        direct_max: podtrace_common::FILTER_DIRECT_MAX,
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> FilterInsn {
    FilterInsn { code, jt, jf, k }
}

fn translated(expression: &str) -> Vec<Insn> {
    let filter = compile(expression, 262144).unwrap();
    translate(&filter.insns, MAPS, opts()).unwrap()
}

fn is_pseudo_call(i: &Insn) -> bool {
    i.code == JMP | CALL && i.regs >> 4 == PSEUDO_CALL
}

/// Every jump lands inside the program and not on the second half of a
/// 64-bit immediate load, nor in another function; each function ends with
/// `exit`.
fn assert_well_formed(prog: &[Insn]) {
    // Functions: the program, then what it calls.
    let mut starts: Vec<usize> = prog
        .iter()
        .enumerate()
        .filter(|(_, i)| is_pseudo_call(i))
        .map(|(at, i)| (at as i64 + 1 + i64::from(i.imm)) as usize)
        .collect();
    starts.push(0);
    starts.sort_unstable();
    starts.dedup();
    let function = |at: usize| starts.iter().rposition(|&s| s <= at).unwrap();
    for &start in &starts[1..] {
        assert_eq!(prog[start - 1].code, JMP | EXIT, "function at {start}");
    }
    let mut second_halves = Vec::new();
    for (at, i) in prog.iter().enumerate() {
        if i.code == LD_IMM64 {
            second_halves.push(at + 1);
        }
    }
    for (at, i) in prog.iter().enumerate() {
        let class = i.code & 0x07;
        let op = i.code & 0xf0;
        let is_jump = (class == JMP || class == JMP32) && op != CALL && op != EXIT;
        if is_jump {
            let target = at as i64 + 1 + i64::from(i.off);
            assert!(
                (0..prog.len() as i64).contains(&target),
                "jump at {at} to {target}"
            );
            assert!(!second_halves.contains(&(target as usize)), "jump at {at}");
            assert_eq!(function(at), function(target as usize), "jump at {at}");
        }
    }
    assert_eq!(prog.last().map(|i| i.code), Some(JMP | EXIT));
    // And every instruction is reachable: the verifier refuses dead code.
    let mut reached = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(at) = todo.pop() {
        if std::mem::replace(&mut reached[at], true) {
            continue;
        }
        let i = prog[at];
        let (class, op) = (i.code & 0x07, i.code & 0xf0);
        let target = (at as i64 + 1 + i64::from(i.off)) as usize;
        match (class, op) {
            (JMP, EXIT) => {}
            (JMP, JA) => todo.push(target),
            _ if is_pseudo_call(&i) => {
                todo.push(at + 1);
                todo.push((at as i64 + 1 + i64::from(i.imm)) as usize);
            }
            (JMP | JMP32, CALL) => todo.push(at + 1),
            (JMP | JMP32, _) => todo.extend([at + 1, target]),
            _ if i.code == LD_IMM64 => {
                reached[at + 1] = true;
                todo.push(at + 2);
            }
            _ => todo.push(at + 1),
        }
    }
    let dead: Vec<usize> = (0..prog.len()).filter(|&at| !reached[at]).collect();
    assert!(dead.is_empty(), "unreachable: {dead:?}");
}

fn count_calls(prog: &[Insn], helper: i32) -> usize {
    prog.iter()
        .filter(|i| i.code == JMP | CALL && !is_pseudo_call(i) && i.imm == helper)
        .count()
}

#[test]
fn real_filters_are_well_formed() {
    for expr in [
        "udp port 9",
        "tcp[tcpflags] & tcp-syn != 0",
        "ip[2:2] > 100 and not icmp",
        "ip6 or arp or vlan 10",
        "ether[0] & 1 = 0 and len > 60",
        "tcp portrange 8000-8100 or (host 10.1.2.3 and net 10.0.0.0/8)",
    ] {
        let prog = translated(expr);
        assert_well_formed(&prog);
        // Accepted packets to the capture slot asked for, rejected ones to
        // the program that counts them.
        assert_eq!(
            tail_call_slots(&prog),
            [1, CAPTURE_SLOT_REJECTED as i32],
            "{expr}"
        );
    }
}

/// The program-array slot of each tail call, in program order.
fn tail_call_slots(prog: &[Insn]) -> Vec<i32> {
    prog.iter()
        .enumerate()
        .filter(|(_, i)| i.code == JMP | CALL && i.imm == HELPER_TAIL_CALL)
        .map(|(at, _)| {
            let slot = prog[at - 1];
            assert_eq!((slot.code, slot.regs), (ALU | MOV, R3));
            slot.imm
        })
        .collect()
}

#[test]
fn constant_verdicts_have_no_dead_paths() {
    for k in [0, 1, 262144] {
        let prog = translate(&[insn(0x06, 0, 0, k)], MAPS, opts()).unwrap();
        assert_well_formed(&prog);
        let want = if k == 0 {
            CAPTURE_SLOT_REJECTED as i32
        } else {
            1
        };
        assert_eq!(tail_call_slots(&prog), [want]);
    }
}

#[test]
fn map_fds_are_pseudo_map_loads() {
    let prog = translated("udp");
    let loads: Vec<(u8, i32)> = prog
        .iter()
        .filter(|i| i.code == LD_IMM64)
        .map(|i| (i.regs >> 4, i.imm))
        .collect();
    assert!(loads.contains(&(PSEUDO_MAP_FD, MAPS.capture)));
    assert!(loads.contains(&(PSEUDO_MAP_FD, MAPS.counters)));
    assert!(loads.iter().all(|(src, _)| *src == PSEUDO_MAP_FD));
}

#[test]
fn operands_from_k_leave_the_source_register_zero() {
    // The verifier refuses a K-form instruction that names a source register.
    for i in translated("ip[2:2] * 3 + 7 > 100 and ip[8] / 2 = 32") {
        let class = i.code & 0x07;
        if matches!(class, ALU | ALU64 | JMP | JMP32) && i.code & SRC_X == 0 {
            assert_eq!(i.regs >> 4, 0, "{i:?}");
        }
    }
}

#[test]
fn unreachable_instructions_produce_no_code() {
    let with_dead = [
        insn(0x06, 0, 0, 1), // ret #1
        insn(0x20, 0, 0, 0), // ld [0], never reached
        insn(0x06, 0, 0, 0), // ret #0
    ];
    let prog = translate(&with_dead, MAPS, opts()).unwrap();
    assert_well_formed(&prog);
    assert_eq!(count_calls(&prog, HELPER_SKB_LOAD_BYTES), 0);
}

#[test]
fn forced_slow_loads_never_read_the_packet_directly() {
    let filter = compile("tcp[tcpflags] & tcp-syn != 0", 262144).unwrap();
    let direct = translate(&filter.insns, MAPS, opts()).unwrap();
    let slow = translate(
        &filter.insns,
        MAPS,
        Options {
            direct_max: 0,
            ..opts()
        },
    )
    .unwrap();
    let reads_data = |p: &[Insn]| {
        p.iter()
            .filter(|i| i.code == LDX | MEM | W && i.off == SKB_DATA)
            .count()
    };
    assert!(reads_data(&direct) > 0);
    assert_eq!(reads_data(&slow), 0);
    assert_eq!(
        count_calls(&slow, HELPER_SKB_LOAD_BYTES),
        count_calls(&direct, HELPER_SKB_LOAD_BYTES)
    );
    assert_well_formed(&slow);
}

/// libpcap refuses to compile `/ 0` and shifts by 32 or more, but the
/// translator's semantics must hold for any program: a division by zero
/// rejects the packet (as libpcap's `bpf_filter()` does), whether the
/// divisor is a constant or X.
#[test]
fn division_by_zero_rejects() {
    let frame = udp_frame(&[0; 20]);
    for (name, program) in [
        (
            "A / #0",
            vec![
                insn(0x00, 0, 0, 7),
                insn(0x34, 0, 0, 0),
                insn(0x06, 0, 0, 1),
            ],
        ),
        (
            "A % #0",
            vec![
                insn(0x00, 0, 0, 7),
                insn(0x94, 0, 0, 0),
                insn(0x06, 0, 0, 1),
            ],
        ),
        (
            "A / X, X = 0",
            vec![
                insn(0x00, 0, 0, 7),
                insn(0x01, 0, 0, 0),
                insn(0x3c, 0, 0, 0),
                insn(0x06, 0, 0, 1),
            ],
        ),
        (
            "A % X, X = 0",
            vec![
                insn(0x00, 0, 0, 7),
                insn(0x01, 0, 0, 0),
                insn(0x9c, 0, 0, 0),
                insn(0x06, 0, 0, 1),
            ],
        ),
    ] {
        // libpcap's bpf_filter() rejects on X = 0; a constant 0 its
        // validator refuses (its bpf_filter() would trap), so no oracle there.
        if name.contains('X') {
            assert!(!libpcap(&program, &frame), "{name}: libpcap");
        }
        assert_eq!(
            run_program(&program, &frame, opts()),
            Verdict::Reject,
            "{name}"
        );
    }
    // A non-zero divisor divides: 7 / 2 == 3 and 7 % 2 == 1 are accepted.
    for (op, want) in [(0x3c, 3), (0x9c, 1)] {
        let program = [
            insn(0x00, 0, 0, 7),
            insn(0x01, 0, 0, 2),
            insn(op, 0, 0, 0),
            insn(0x15, 0, 1, want), // jeq #want
            insn(0x06, 0, 0, 1),
            insn(0x06, 0, 0, 0),
        ];
        assert!(libpcap(&program, &frame));
        assert_eq!(run_program(&program, &frame, opts()), Verdict::Accept);
    }
}

/// A shift by 32 or more gives 0 (eBPF would shift by the amount mod 32):
/// `A = 5; A <<= n; accept if A == 0` accepts exactly when n >= 32.
#[test]
fn wide_shifts_give_zero() {
    let frame = udp_frame(&[0; 20]);
    for (left, right) in [(0x64, 0x74), (0x6c, 0x7c)] {
        for n in [4, 31, 32, 40] {
            for op in [left, right] {
                let by_x = op & 0x08 != 0;
                let shift = if by_x {
                    insn(op, 0, 0, 0)
                } else {
                    insn(op, 0, 0, n)
                };
                let program = [
                    insn(0x00, 0, 0, 0x8000_0005),
                    insn(0x01, 0, 0, n), // ldx #n
                    shift,
                    insn(0x15, 0, 1, 0), // jeq #0
                    insn(0x06, 0, 0, 1),
                    insn(0x06, 0, 0, 0),
                ];
                let want = if n >= 32 {
                    Verdict::Accept
                } else {
                    Verdict::Reject
                };
                assert_eq!(
                    run_program(&program, &frame, opts()),
                    want,
                    "op {op:#x} by {n}"
                );
            }
        }
    }
}

/// What libpcap's filters compute, the translations compute: every
/// expression on every frame, reading the linear head directly, through
/// `bpf_skb_load_bytes` only, and with a linear head cut short.
#[test]
fn translations_agree_with_libpcap() {
    let frames = frames();
    let mut both_ways = 0;
    for expr in EXPRESSIONS {
        let filter = compile(expr, 262144).unwrap();
        let mut accepted = 0;
        for (name, frame) in &frames {
            let want = filter.libpcap_verdict(frame) != 0;
            accepted += usize::from(want);
            let want = if want {
                Verdict::Accept
            } else {
                Verdict::Reject
            };
            for (how, options, linear) in [
                ("direct", opts(), frame.len()),
                (
                    "slow loads",
                    Options {
                        direct_max: 0,
                        ..opts()
                    },
                    frame.len(),
                ),
                ("short linear head", opts(), frame.len().min(54)),
            ] {
                let prog = translate(&filter.insns, MAPS, options).unwrap();
                let got = Machine::new(frame, linear).run(&prog, options.slot);
                assert_eq!(got, want, "{expr:?} on {name} ({how})");
            }
        }
        both_ways += usize::from(accepted > 0 && accepted < frames.len());
    }
    // The frames exercise the expressions both ways, nearly all of them.
    assert!(both_ways * 10 >= EXPRESSIONS.len() * 9, "{both_ways}");
}

/// Expressions about the bytes around a VLAN tag: within it, across its
/// edges, after it, through X, and the length.
const AROUND_TAG: &[&str] = &[
    "vlan",
    "vlan 10 and udp port 7001",
    "vlan 100 and vlan 10 and udp",
    "ether[12:2] = 0x8100 and ether[14:2] & 0xfff = 10",
    "ether[13] = 0 or ether[12] = 0x81 or ether[12:4] = 0x8100000a",
    "ether[9:4] = 0x00000081 or ether[10:4] = 0x00018100 or ether[11:2] = 0x0181",
    "ether[13:4] = 0x00000a08 or ether[14:4] = 0x000a0800 or ether[15:2] = 0x0a08",
    "ether[15:4] = 0x0a080045",
    "ether[(ether[0] & 1) + 11 : 4] & 0xffffff = 0x810000",
    // At 2 (unicast) or 15 (broadcast): in the tag, or across its end.
    "ether[ether[0] & 15] = 10 or ether[ether[0] & 15 : 4] = 0x64080600",
    "len = 80 or len > 100",
];

/// A frame whose outer tag the kernel holds in the skb's metadata: the
/// translated filter sees the frame as written (the tag back at offset
/// 12), the same verdicts as libpcap on that frame.
#[test]
fn tags_in_metadata_agree_with_libpcap() {
    // Every frame of `frames` as is, and with an outer tag in metadata:
    // 802.1Q for VLAN 10, 802.1ad for VLAN 100 (the frame already tagged
    // in its bytes becomes double-tagged).
    let mut tagged = Vec::new();
    for (name, frame) in frames() {
        for (tpid, vid) in [(0x8100u16, 10u16), (0x88a8, 100)] {
            let mut written = frame.clone();
            written.splice(
                12..12,
                tpid.to_be_bytes().into_iter().chain(vid.to_be_bytes()),
            );
            tagged.push((name, written, true));
        }
        tagged.push((name, frame, false));
    }
    let mut one_sided = Vec::new();
    let expressions: Vec<&str> = EXPRESSIONS.iter().chain(AROUND_TAG).copied().collect();
    for expr in &expressions {
        let filter = compile(expr, 262144).unwrap();
        let mut accepted = 0;
        for (name, written, in_metadata) in &tagged {
            let want = filter.libpcap_verdict(written) != 0;
            accepted += usize::from(want);
            let want = if want {
                Verdict::Accept
            } else {
                Verdict::Reject
            };
            let (skb, tag) = if *in_metadata {
                let tpid = u16::from_be_bytes([written[12], written[13]]);
                let tci = u16::from_be_bytes([written[14], written[15]]);
                ([&written[..12], &written[16..]].concat(), Some((tpid, tci)))
            } else {
                (written.clone(), None)
            };
            for (how, options, linear) in [
                ("direct", opts(), skb.len()),
                (
                    "slow loads",
                    Options {
                        direct_max: 0,
                        ..opts()
                    },
                    skb.len(),
                ),
                ("short linear head", opts(), skb.len().min(50)),
            ] {
                let prog = translate(&filter.insns, MAPS, options).unwrap();
                let machine = Machine::new(&skb, linear);
                let machine = match tag {
                    Some((tpid, tci)) => machine.with_tag(tpid, tci),
                    None => machine,
                };
                let got = machine.run(&prog, options.slot);
                assert_eq!(got, want, "{expr:?} on {name}, tag {tag:x?} ({how})");
            }
        }
        if AROUND_TAG.contains(expr) && (accepted == 0 || accepted == tagged.len()) {
            one_sided.push(*expr);
        }
    }
    // Those about the tag meet frames they accept and ones they reject.
    assert!(one_sided.is_empty(), "{one_sided:?}");
}

#[test]
fn too_large_for_16_bit_jumps_is_an_error() {
    // 4000 indirect loads: every one may jump to the shared reject code.
    let mut filter = vec![insn(0x50, 0, 0, 14); 4000]; // ldb [x + 14]
    filter.push(insn(0x06, 0, 0, 1));
    let err = translate(&filter, MAPS, opts()).unwrap_err();
    assert!(matches!(err, TranslateError::TooLarge(_)), "{err}");
}

#[test]
fn loops_are_refused() {
    // libpcap's `protochain` walks extension headers with a backward `ja`.
    for expr in ["ip protochain 4", "ip6 protochain 17", "protochain 6"] {
        let filter = compile(expr, 262144).unwrap();
        let err = translate(&filter.insns, MAPS, opts()).unwrap_err();
        assert!(matches!(err, TranslateError::Loops(_)), "{expr}: {err}");
        assert!(err.to_string().contains("protochain"), "{err}");
    }
    let back = [insn(0x05, 0, 0, u32::MAX), insn(0x06, 0, 0, 1)]; // ja -1
    assert_eq!(
        translate(&back, MAPS, opts()),
        Err(TranslateError::Loops(0))
    );
}

#[test]
fn loads_around_a_vlan_tag_are_well_formed() {
    for expr in [
        // Within the tag, across its edges, after it, through X.
        "ether[12:2] = 0x8100 and ether[14:2] & 0xfff = 10",
        "ether[13] = 0 or ether[12] = 0x81 or ether[12:4] = 0x8100000a",
        "ether[9:4] = 1 or ether[10:4] = 2 or ether[11:2] = 3",
        "ether[13:4] = 1 or ether[14:4] = 2 or ether[15:2] = 3 or ether[15:4] = 4",
        "ether[ether[0] & 15] = 1 or ether[ether[1] & 15 : 4] = 2",
        "vlan 10 and tcp port 80",
        "len > 100",
    ] {
        let prog = translated(expr);
        assert_well_formed(&prog);
    }
    // The shared function for loads across the tag's edges only when used.
    let calls = |expr| {
        translated(expr)
            .iter()
            .filter(|i| is_pseudo_call(i))
            .count()
    };
    assert_eq!(calls("udp"), 0);
    assert_eq!(
        calls("ether[12:2] = 1 and ether[0:4] = 2 and ip[2:2] > 9"),
        0
    );
    assert_eq!(calls("ether[10:4] = 1"), 1);
    assert!(calls("tcp port 80") > 0);
}

#[test]
fn length_counts_the_tag() {
    // `len` adds r9 (4 with a tag put back, else 0).
    let prog = translated("len > 100");
    assert!(prog.contains(&Insn {
        code: ALU | ADD | SRC_X,
        regs: (TAG_LEN << 4) | A,
        off: 0,
        imm: 0
    }));
}

const EXPRESSIONS: &[&str] = &[
    "udp port 7001",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
    "ip[2:2] > 100 and not icmp",
    "ip6 or arp",
    "vlan and udp",
    "ether[0] & 1 = 0 and len > 60",
    "tcp portrange 8000-9100 or (host 10.1.2.3 and net 10.0.0.0/8)",
    "ip and len / (ip[9] - 6) != 123456",
    "len - 14 >= 1000 or len * 2 < 130",
    "(len >> 1) & 0x7 == 3 or (len << 2) ^ 0x55 > 4000",
    "ip[6:2] & 0x1fff = 0 and udp",
    "tcp[1500:4] != 0",
    "udp[8:2] = 0x0001",
    "ip[0] & 0xf > 5",
    "icmp[icmptype] == icmp-echo",
    "ip6 and ip6[6] = 17",
    "arp[6:2] = 1",
    "greater 1000",
    "less 80",
];

/// Ethernet, IPv4 (no options), UDP 5000 → 7001, `payload`.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend([0x45, 0]);
    f.extend((28 + payload.len() as u16).to_be_bytes());
    f.extend([0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend(5000u16.to_be_bytes());
    f.extend(7001u16.to_be_bytes());
    f.extend((8 + payload.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// Frames of the kinds the expressions are about, named.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let payload: Vec<u8> = (0..1700u32).map(|i| (i * 7 + 3) as u8).collect();
    let tcp = |flags: u8, data: &[u8]| {
        let mut f = udp_frame(&[]);
        f[23] = 6;
        f.truncate(34);
        f.extend([
            0x9c, 0x40, 0x23, 0x28, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        f.extend(data);
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f
    };
    let mut vlan = udp_frame(&payload[..30]);
    vlan.splice(12..12, [0x81, 0x00, 0, 10]);
    let mut fragment = udp_frame(&payload[..100]);
    fragment[20..22].copy_from_slice(&[0x00, 0x10]);
    let mut options = udp_frame(&[0, 1, 2, 3]);
    options.splice(34..34, [1, 1, 1, 0]);
    options[14] = 0x46;
    options[17] += 4;
    let mut ipv6 = vec![
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 12, 17, 64,
    ];
    ipv6.extend([0xfd; 32]);
    ipv6.extend([0x13, 0x88, 0x1b, 0x59, 0, 12, 0, 0, 0, 1, 2, 3]);
    let mut arp = vec![0xff; 6];
    arp.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend([
        0x02, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ]);
    let mut icmp = udp_frame(&payload[..56]);
    icmp[23] = 1;
    icmp[34..38].copy_from_slice(&[8, 0, 0, 0]);
    vec![
        ("udp 7001", udp_frame(&[0, 1, 2, 3])),
        ("udp big", udp_frame(&payload[..1200])),
        ("tcp syn 9000", tcp(0x02, &[])),
        ("http get", tcp(0x18, b"GET / HTTP/1.0\r\n\r\n")),
        ("tcp big", tcp(0x10, &payload)),
        ("icmp echo", icmp),
        ("vlan udp", vlan),
        ("udp fragment", fragment),
        ("ip options", options),
        ("ipv6 udp", ipv6),
        ("arp request", arp),
        ("truncated tcp", tcp(0x02, &[])[..40].to_vec()),
    ]
}

fn libpcap(program: &[FilterInsn], frame: &[u8]) -> bool {
    let filter = Filter {
        expression: String::new(),
        insns: program.to_vec(),
        compile_time: Duration::ZERO,
    };
    filter.libpcap_verdict(frame) != 0
}

fn run_program(program: &[FilterInsn], frame: &[u8], options: Options) -> Verdict {
    let prog = translate(program, MAPS, options).unwrap();
    Machine::new(frame, frame.len()).run(&prog, options.slot)
}
