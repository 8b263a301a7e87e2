//! Tables 1–3: TCP throughput, the UDP packet rate with its loss-free
//! search, and loss accounting with a buffer too small on purpose.

use anyhow::Result;

use super::{
    iperf::Load,
    procs::{CaptureSpec, Tool},
    report::{self, Report},
    rotated, Bench, LossFree, RunResult, FULL, SENDERS, SMALL_BUFFER_KIB, UDP_LENS, UDP_SNAPLEN,
};

impl Bench<'_> {
    pub(super) fn tcp(&mut self, report: &mut Report) -> Result<()> {
        let specs = [
            spec(Tool::Nothing, 0),
            spec(Tool::Tcpdump, 96),
            spec(Tool::Podtrace, 96),
            spec(Tool::Tcpdump, FULL),
            spec(Tool::Podtrace, FULL),
        ];
        for run in 0..self.plan.runs {
            for &s in rotated(&specs, run) {
                let r = self.run(s, Load::Tcp, 1, self.plan.tcp_secs)?;
                eprintln!(
                    "bench:   {:<28} {:6.2} Gbit/s",
                    report::tcp_label(s),
                    r.traffic.bits_per_second / 1e9
                );
                report.tcp.entry(s).or_default().push(r);
            }
        }
        Ok(())
    }

    pub(super) fn udp(&mut self, report: &mut Report) -> Result<()> {
        let tools = [Tool::Nothing, Tool::Tcpdump, Tool::Podtrace];
        for senders in SENDERS {
            for len in UDP_LENS {
                for run in 0..self.plan.runs {
                    for &tool in rotated(&tools, run) {
                        let s = spec(tool, UDP_SNAPLEN);
                        let load = Load::Udp { len, pps: 0 };
                        let r = self.run(s, load, senders, self.plan.udp_secs)?;
                        log_udp(&report::udp_label(len, senders, tool), &r);
                        let key = (len, senders, tool);
                        report.udp.entry(key).or_default().push(r);
                        if tool != Tool::Nothing {
                            let found = self.loss_free(s, len, senders, &r)?;
                            report.loss_free.entry(key).or_default().push(found);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Highest loss-free rate, starting from an unthrottled run: if that
    /// lost nothing the senders are the limit; else halve the interval
    /// between 0 and its rate `search_steps` times.
    fn loss_free(
        &mut self,
        s: CaptureSpec,
        len: u32,
        senders: u16,
        full: &RunResult,
    ) -> Result<LossFree> {
        if full.lossless() {
            return Ok(LossFree {
                pps: full.traffic.sent_pps(),
                sender_limited: true,
                lossy_above: None,
            });
        }
        let unthrottled = full.traffic.sent_pps();
        let (mut low, mut high) = (0.0, unthrottled);
        let mut best = 0.0f64;
        for _ in 0..self.plan.search_steps {
            let mid = (low + high) / 2.0;
            let load = Load::Udp {
                len,
                pps: mid as u64,
            };
            let r = self.run(s, load, senders, self.plan.step_secs)?;
            log_udp(&format!("  search at {:.0} kpps", mid / 1e3), &r);
            if r.lossless() {
                best = best.max(r.traffic.sent_pps());
                if r.traffic.sent_pps() < 0.95 * mid {
                    // Pacing costs iperf3 more than sending flat out: it
                    // cannot go faster, so searching higher is pointless.
                    return Ok(LossFree {
                        pps: best,
                        sender_limited: false,
                        lossy_above: Some(unthrottled),
                    });
                }
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(LossFree {
            pps: best,
            sender_limited: false,
            lossy_above: None,
        })
    }

    /// Both tools with a buffer too small on purpose: does the loss they
    /// report match what is missing from their files?
    pub(super) fn small_buffers(&mut self, report: &mut Report) -> Result<()> {
        let senders = *SENDERS.iter().max().unwrap();
        for run in 0..self.plan.runs {
            for &tool in rotated(&[Tool::Tcpdump, Tool::Podtrace], run) {
                let s = CaptureSpec {
                    tool,
                    snaplen: UDP_SNAPLEN,
                    buffer_kib: Some(SMALL_BUFFER_KIB),
                    filter: None,
                };
                let load = Load::Udp { len: 64, pps: 0 };
                let r = self.run(s, load, senders, self.plan.udp_secs)?;
                log_udp(&report::small_label(tool), &r);
                report.small.entry(tool).or_default().push(r);
            }
        }
        Ok(())
    }
}

fn spec(tool: Tool, snaplen: u32) -> CaptureSpec {
    CaptureSpec {
        tool,
        snaplen,
        buffer_kib: None,
        filter: None,
    }
}

fn log_udp(label: &str, r: &RunResult) {
    let capture = match (r.capture, r.missing()) {
        (Some(c), Some(missing)) => format!(
            ", reported lost {}, missing from file {missing}, cpu {:.2} s",
            c.lost,
            c.cpu.as_secs_f64()
        ),
        _ => String::new(),
    };
    eprintln!(
        "bench:   {label:<36} sent {:7.1} kpps, received {:7.1} kpps{capture}",
        r.traffic.sent_pps() / 1e3,
        r.traffic.received_pps() / 1e3
    );
}
