//! Table 5c: what one run of a filter costs in the kernel, without any
//! traffic: the programs podtrace attaches, run with BPF_PROG_TEST_RUN on
//! one 64-byte UDP frame that the filters reject, many times over. This
//! isolates the filter engines from the veth, iperf3 and the scheduler,
//! which dominate the rates of tables 5a and 5b.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use etherparse::PacketBuilder;
use podtrace::{
    attach::{self, FilterEngine, LoadOptions, Programs},
    filter,
};
use podtrace_common::FilterInsn;

use super::filters::NoMatch;

/// Runs per measurement (the kernel reports the mean), and measurements per
/// row (the table shows the lowest mean, the least disturbed by the rest of
/// the machine); a tenth and one in a quick run.
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Copy)]
struct Plan {
    repeat: u32,
    rounds: usize,
}

/// Table 5c's rows, and how they were measured.
#[derive(Debug, Clone, Default)]
pub struct Costs {
    pub quick: bool,
    pub rows: Vec<Cost>,
}

/// One row: a filter, an engine, ns per packet.
#[derive(Debug, Clone)]
pub struct Cost {
    pub label: String,
    pub insns: usize,
    pub ns: u32,
}

/// The frame: like table 5b's flood, 64 bytes of UDP payload to iperf3's port.
fn frame() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 246, 250, 1], [10, 246, 250, 2], 64)
        .udp(40000, 5201)
        .write(&mut buf, &[0u8; 64])?;
    Ok(buf)
}

/// Every NoMatch filter with its engine, and a one-instruction `ret #0`
/// filter per engine as the floor (program call, counters, no filter work).
pub fn measure(quick: bool) -> Result<Costs> {
    let plan = if quick {
        Plan {
            repeat: REPEAT / 10,
            rounds: 1,
        }
    } else {
        Plan {
            repeat: REPEAT,
            rounds: ROUNDS,
        }
    };
    let frame = frame()?;
    let floor = [FilterInsn {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let mut rows: Vec<(String, Vec<FilterInsn>, FilterEngine)> = Vec::new();
    for engine in [FilterEngine::Native, FilterEngine::Interpreter] {
        let name = engine_name(engine);
        rows.push((
            format!("`ret #0` ({name}): the floor"),
            floor.to_vec(),
            engine,
        ));
    }
    for f in [
        NoMatch::Short,
        NoMatch::ShortInterpreted,
        NoMatch::Long,
        NoMatch::LongInterpreted,
    ] {
        let compiled = filter::compile(&f.expression(), 262_144)?;
        rows.push((f.label(), compiled.insns, f.engine()));
    }
    let rows = rows
        .into_iter()
        .map(|(label, insns, engine)| {
            let ns = run(&insns, engine, &frame, plan).with_context(|| label.clone())?;
            eprintln!("bench:   {label}: {ns} ns per packet");
            Ok(Cost {
                label,
                insns: insns.len(),
                ns,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Costs { quick, rows })
}

fn engine_name(engine: FilterEngine) -> &'static str {
    match engine {
        FilterEngine::Interpreter => "interpreted",
        _ => "native",
    }
}

/// Where BPF_PROG_TEST_RUN says a TC program's packet came in.
const LOOPBACK_IFINDEX: u32 = 1;

/// Lowest mean ns per run of the ingress program over the plan's rounds.
fn run(insns: &[FilterInsn], engine: FilterEngine, frame: &[u8], plan: Plan) -> Result<u32> {
    let mut programs = Programs::load(LoadOptions {
        snaplen: 96,
        ring_bytes: 1 << 20,
        filter: insns,
        engine,
        slow_loads_only: false,
        immediate: false,
        links: 1,
    })?;
    anyhow::ensure!(programs.engine_used == Some(engine), "engine not used");
    // A test run's packet comes on the loopback: counted in a slot of its
    // own, as a packet on an attached link is.
    programs.count_link(LOOPBACK_IFINDEX)?;
    let before = programs.link_counters(LOOPBACK_IFINDEX).filtered;
    let prog = programs.entry(TcAttachType::Ingress)?;
    let mut best = u32::MAX;
    for _ in 0..plan.rounds {
        let (_, ns) = attach::test_run(prog, frame, plan.repeat)?;
        best = best.min(ns);
    }
    let rejected = programs.link_counters(LOOPBACK_IFINDEX).filtered - before;
    anyhow::ensure!(
        rejected == u64::from(plan.repeat) * plan.rounds as u64,
        "the filter accepted the frame ({rejected} rejected)"
    );
    Ok(best)
}

/// Table 5c.
pub fn render(costs: &Costs, o: &mut String) {
    let (repeat, rounds) = if costs.quick {
        (REPEAT / 10, 1)
    } else {
        (REPEAT, ROUNDS)
    };
    let _ = writeln!(
        o,
        "\n### 5c. Kernel cost of a filter run (BPF_PROG_TEST_RUN, no traffic)\n\n\
         The program podtrace attaches at ingress, run {repeat} times in a row by the kernel on one \
         64-byte UDP frame the filters reject; lowest mean of {rounds} such measurement(s). The \
         `ret #0` rows are a filter that rejects at once: calling the program and counting. \
         Includes BPF_PROG_TEST_RUN's own per-run cost.\n\n\
         | filter | cBPF instructions | ns per packet |\n\
         |---|---:|---:|"
    );
    for c in &costs.rows {
        let _ = writeln!(o, "| {} | {} | {} |", c.label, c.insns, c.ns);
    }
}
