//! Table 5d's estimate: how much faster a stream ran in one kind of
//! phase (odd) than in the other (even), with a confidence interval.
//!
//! A ratio of pooled rates (bytes over seconds, odd phases against even
//! ones) per batch of consecutive phases, averaged over the batches, with a
//! Student's t interval over the batch means. Batches many seconds long are
//! nearly independent even though neighbouring phases are not, and a ratio
//! of sums has no 1/x bias from noisy denominators, as a mean of per-phase
//! ratios would (with phases that vary by ~15%, about +1%).

/// Fewer batches than this: no interval, the mean alone.
const MIN_BATCHES: usize = 6;

/// The stream's veth's byte counter, and when it was read (seconds since
/// the first phase began).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: f64,
    pub bytes: u64,
}

/// Each phase's (seconds, bytes), from samples read just after the move
/// that starts it and just before the next: the moves themselves (the
/// benchmark's syscalls and their IPIs, which differ between attach and
/// detach) count for neither side.
pub fn phases(samples: &[(Sample, Sample)]) -> Vec<(f64, u64)> {
    samples
        .iter()
        .map(|(start, end)| (end.at - start.at, end.bytes.saturating_sub(start.bytes)))
        .collect()
}

/// A batch's rate in odd phases over its rate in even ones (indices are
/// of the whole run, so a batch may start with either).
fn batch_ratio(phases: &[(f64, u64)], first: usize) -> Option<f64> {
    let (mut on, mut off) = ((0.0, 0u64), (0.0, 0u64));
    for (k, &(secs, bytes)) in phases.iter().enumerate() {
        let side = if (first + k) % 2 == 1 {
            &mut on
        } else {
            &mut off
        };
        side.0 += secs;
        side.1 += bytes;
    }
    let rate = |(secs, bytes): (f64, u64)| (secs > 0.0).then(|| bytes as f64 / secs);
    let (on, off) = (rate(on)?, rate(off)?);
    (off > 0.0).then(|| on / off)
}

/// The estimate of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Mean of the batches' odd/even ratios.
    pub mean: f64,
    /// 95% confidence interval of that mean (none with few batches).
    pub ci: Option<(f64, f64)>,
    pub batches: usize,
}

/// Splits the phases into `batches` runs of consecutive phases and
/// estimates the odd/even ratio (see the module doc).
pub fn estimate(phases: &[(f64, u64)], batches: usize) -> Option<Estimate> {
    let size = phases.len() / batches.max(1);
    if size < 2 {
        return None;
    }
    let ratios: Vec<f64> = (0..batches)
        .filter_map(|b| batch_ratio(&phases[b * size..(b + 1) * size], b * size))
        .collect();
    let n = ratios.len();
    if n == 0 {
        return None;
    }
    let mean = ratios.iter().sum::<f64>() / n as f64;
    let ci = (n >= MIN_BATCHES).then(|| {
        let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t975(n - 1) * (var / n as f64).sqrt();
        (mean - half, mean + half)
    });
    Some(Estimate {
        mean,
        ci,
        batches: n,
    })
}

/// Student's t 97.5% quantile for `df` degrees of freedom (Cornish-Fisher
/// expansion around the normal quantile; within 0.1% of the tables for
/// df >= 5).
pub fn t975(df: usize) -> f64 {
    let z: f64 = 1.959_964;
    let n = df as f64;
    z + (z.powi(3) + z) / (4.0 * n)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * n.powi(3))
}

impl Estimate {
    /// Whether the estimate shows at least `goal_pct` percent.
    pub fn verdict(&self, goal_pct: f64) -> Verdict {
        match self.ci {
            Some((lo, _)) if lo * 100.0 >= goal_pct => Verdict::Shown,
            Some((_, hi)) if hi * 100.0 < goal_pct => Verdict::Refuted,
            Some(_) => Verdict::Unresolved,
            None => Verdict::MeanOnly(self.mean * 100.0 >= goal_pct),
        }
    }

    /// The interval in percent, "lo–hi%", or "—" without one.
    pub fn ci_text(&self) -> String {
        self.ci.map_or("—".into(), |(lo, hi)| {
            format!("{:.2}–{:.2}%", lo * 100.0, hi * 100.0)
        })
    }

    /// Whether the interval holds `pct` percent (a method check).
    pub fn holds(&self, pct: f64) -> Option<bool> {
        self.ci
            .map(|(lo, hi)| lo * 100.0 <= pct && pct <= hi * 100.0)
    }
}

/// Whether an estimate shows a stream kept at least some percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole confidence interval is at or above it.
    Shown,
    /// The whole interval is below it.
    Refuted,
    /// The interval spans it: the noise is larger than the question.
    Unresolved,
    /// Too few batches (a quick run): the mean alone.
    MeanOnly(bool),
}

impl Verdict {
    pub fn cell(self) -> &'static str {
        match self {
            Self::Shown | Self::MeanOnly(true) => "yes",
            Self::Refuted | Self::MeanOnly(false) => "**no**",
            Self::Unresolved => "**not shown**: the confidence interval spans the goal",
        }
    }
}

#[cfg(test)]
mod tests;
