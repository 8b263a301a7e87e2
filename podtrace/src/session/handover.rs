//! Moving what a pod receives from its host veth's egress hook to its
//! eth0 hook while packets flow, without writing any packet twice.
//!
//! A packet that crosses the veth passes the egress hook first and eth0's
//! ingress a few microseconds later (through the CPU's backlog). Once the
//! eth0 hook is attached and before the egress hook is detached, such a
//! packet is seen by both, and one in flight when the eth0 hook appears
//! is too. So, from a while before the eth0 hook is attached (arming) until
//! a while after the egress hook is gone (settling), the session remembers
//! a digest of every packet the egress hook wrote, and drops an eth0 copy
//! whose digest it remembers from at most [`TRANSIT`] earlier. A packet a
//! CNI redirected past the veth has no egress copy and is written.
//!
//! The one assumption: no packet takes longer than [`TRANSIT`] from the
//! veth's egress to eth0's ingress (they are microseconds apart; a CPU's
//! backlog holds at most `netdev_max_backlog` packets). Two different
//! packets that are byte for byte the same in their first
//! [`DIGEST_BYTES`] bytes and length within [`TRANSIT`] of each other,
//! one through the veth and one redirected, would count as one.

use std::{
    collections::{hash_map::DefaultHasher, HashMap, VecDeque},
    hash::{Hash, Hasher},
};

/// Longest time a packet is assumed to take from the veth's egress hook to
/// eth0's ingress; also how long the session arms before the eth0 hook is
/// attached, and settles after the egress hook is gone.
pub const TRANSIT_NS: u64 = 200_000_000;

/// Bytes of a packet that go into its digest (headers, with their
/// sequence numbers, ids and checksums, and the start of the payload).
pub const DIGEST_BYTES: usize = 256;

/// A packet's identity for the handover: its length and first bytes.
pub fn digest(orig_len: u32, data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    orig_len.hash(&mut h);
    data[..data.len().min(DIGEST_BYTES)].hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub struct Handover {
    /// When remembering started (monotonic ns).
    pub armed_at: u64,
    /// When the egress hook was detached, once it was.
    pub egress_gone_at: Option<u64>,
    /// Egress copies, oldest first: (timestamp, digest).
    copies: VecDeque<(u64, u64)>,
    /// Timestamps of the unmatched copies of each digest, oldest first.
    by_digest: HashMap<u64, VecDeque<u64>>,
    /// eth0 copies dropped as packets the egress hook had written.
    pub duplicates: u64,
}

impl Handover {
    pub fn arm(now_ns: u64) -> Self {
        Self {
            armed_at: now_ns,
            egress_gone_at: None,
            copies: VecDeque::new(),
            by_digest: HashMap::new(),
            duplicates: 0,
        }
    }

    /// Whether every egress copy that could reach eth0 after `now_ns` is
    /// remembered, so the eth0 hook may be attached.
    pub fn armed(&self, now_ns: u64) -> bool {
        now_ns >= self.armed_at + TRANSIT_NS
    }

    /// Whether the handover is over: every record timestamped up to
    /// [`TRANSIT_NS`] after the egress hook went away was drained before
    /// `drained_from_ns` (the start of the last drain).
    pub fn settled(&self, drained_from_ns: u64) -> bool {
        self.egress_gone_at
            .is_some_and(|gone| drained_from_ns > gone + TRANSIT_NS)
    }

    /// A packet the egress hook wrote.
    pub fn egress_copy(&mut self, ts: u64, digest: u64) {
        self.copies.push_back((ts, digest));
        self.by_digest.entry(digest).or_default().push_back(ts);
    }

    /// Whether a packet the eth0 hook saw at `ts` was written already by
    /// the egress hook (then it is not written again).
    pub fn is_duplicate(&mut self, ts: u64, digest: u64) -> bool {
        self.forget_before(ts.saturating_sub(TRANSIT_NS));
        let Some(times) = self.by_digest.get_mut(&digest) else {
            return false;
        };
        // The oldest copy at most TRANSIT before and not after this one.
        match times.iter().position(|&t| t <= ts) {
            Some(i) => {
                times.remove(i);
                if times.is_empty() {
                    self.by_digest.remove(&digest);
                }
                self.duplicates += 1;
                true
            }
            None => false,
        }
    }

    fn forget_before(&mut self, limit: u64) {
        while let Some(&(ts, digest)) = self.copies.front() {
            if ts >= limit {
                break;
            }
            self.copies.pop_front();
            if let Some(times) = self.by_digest.get_mut(&digest) {
                // Unless a match took it already.
                if times.front() == Some(&ts) {
                    times.pop_front();
                }
                if times.is_empty() {
                    self.by_digest.remove(&digest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_packet_seen_at_both_hooks_is_written_once() {
        let mut h = Handover::arm(0);
        let p = digest(60, b"packet p");
        let q = digest(60, b"packet q");
        h.egress_copy(10 * MS, p);
        // p reaches eth0 20 us later; q was redirected past the veth.
        assert!(h.is_duplicate(10 * MS + 20_000, p));
        assert!(!h.is_duplicate(11 * MS, q));
        // A second eth0 copy of p would be a new packet.
        assert!(!h.is_duplicate(12 * MS, p));
        assert_eq!(h.duplicates, 1);
    }

    #[test]
    fn same_bytes_twice_are_matched_one_for_one() {
        let mut h = Handover::arm(0);
        let arp = digest(42, b"who-has");
        h.egress_copy(MS, arp);
        h.egress_copy(2 * MS, arp);
        assert!(h.is_duplicate(MS + 1, arp));
        assert!(h.is_duplicate(2 * MS + 1, arp));
        assert!(!h.is_duplicate(3 * MS, arp));
    }

    #[test]
    fn copies_older_than_transit_are_forgotten() {
        let mut h = Handover::arm(0);
        let p = digest(60, b"old");
        h.egress_copy(MS, p);
        assert!(!h.is_duplicate(MS + TRANSIT_NS + 1, p));
        assert!(h.copies.is_empty() && h.by_digest.is_empty());
    }

    #[test]
    fn a_copy_after_the_eth0_packet_is_not_its_original() {
        let mut h = Handover::arm(0);
        let p = digest(60, b"later");
        h.egress_copy(5 * MS, p);
        assert!(!h.is_duplicate(4 * MS, p));
    }

    #[test]
    fn arming_and_settling_wait_for_transit() {
        let mut h = Handover::arm(100 * MS);
        assert!(!h.armed(100 * MS + TRANSIT_NS - 1));
        assert!(h.armed(100 * MS + TRANSIT_NS));
        assert!(!h.settled(u64::MAX), "the egress hook is still there");
        h.egress_gone_at = Some(400 * MS);
        assert!(!h.settled(400 * MS + TRANSIT_NS));
        assert!(h.settled(400 * MS + TRANSIT_NS + 1));
    }

    #[test]
    fn the_digest_is_length_and_leading_bytes() {
        let mut long = vec![7u8; 1500];
        let a = digest(1500, &long);
        long[1400] = 8;
        assert_eq!(
            digest(1500, &long),
            a,
            "bytes past DIGEST_BYTES do not count"
        );
        long[20] = 8;
        assert_ne!(digest(1500, &long), a);
        assert_ne!(digest(1501, &long[..1500]), digest(1500, &long[..1500]));
    }
}
