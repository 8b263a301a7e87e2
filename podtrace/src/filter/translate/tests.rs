//! Shape of the translated programs. What they compute is checked against
//! libpcap in the kernel itself (BPF_PROG_TEST_RUN) by the e2e suite's
//! `filter::engines_match_libpcap`, and on real traffic against tcpdump.

use super::*;
use crate::filter::compile;

const MAPS: Maps = Maps {
    capture: 7,
    counters: 8,
};

fn opts() -> Options {
    Options {
        slot: 1,
        direct_max: Options::DIRECT_MAX,
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> FilterInsn {
    FilterInsn { code, jt, jf, k }
}

fn translated(expression: &str) -> Vec<Insn> {
    let filter = compile(expression, 262144).unwrap();
    translate(&filter.insns, MAPS, opts()).unwrap()
}

/// Every jump lands inside the program and not on the second half of a
/// 64-bit immediate load; the program ends with `exit`.
fn assert_well_formed(prog: &[Insn]) {
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
        .filter(|i| i.code == JMP | CALL && i.imm == helper)
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

#[test]
fn constant_edge_cases_reject_or_zero() {
    // A / 0 rejects without dividing; A << 40 is 0, never a shift by 40.
    let div0 = [insn(0x34, 0, 0, 0), insn(0x06, 0, 0, 1)];
    let prog = translate(&div0, MAPS, opts()).unwrap();
    assert!(!prog.iter().any(|i| i.code & 0xf7 == ALU | 0x30));
    let shift = [insn(0x64, 0, 0, 40), insn(0x06, 0, 0, 1)];
    let prog = translate(&shift, MAPS, opts()).unwrap();
    assert!(!prog.iter().any(|i| i.code == ALU | LSH));
    assert!(prog.contains(&Insn {
        code: ALU | MOV,
        regs: A,
        off: 0,
        imm: 0
    }));
}

#[test]
fn too_large_for_16_bit_jumps_is_an_error() {
    // 4000 indirect loads: every one may jump to the shared reject code.
    let mut filter = vec![insn(0x50, 0, 0, 14); 4000]; // ldb [x + 14]
    filter.push(insn(0x06, 0, 0, 1));
    let err = translate(&filter, MAPS, opts()).unwrap_err();
    assert!(matches!(err, TranslateError::TooLarge(_)), "{err}");
}
