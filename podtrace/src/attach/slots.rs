//! Per-link counter slots: the programs count every packet (passed,
//! filtered, lost) in the slot of the link it is on, so each pod of a
//! capture has exact numbers of its own.
//!
//! A link gets a slot before programs are attached to it and gives it back
//! after they are detached, with its final counts; the slot's counters are
//! zeroed then, for the next link. The kernel finds a link's slot at
//! `ifindex % LINK_TABLE_LEN` of `LINK_SLOTS`, or in `LINK_SLOTS_MORE` when
//! another link holds that entry.

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use podtrace_common::{
    LinkSlot, COUNTERS_LEN, COUNTER_FILTERED, COUNTER_LOST, COUNTER_PASSED, LINK_TABLE_LEN,
    SLOT_UNATTRIBUTED,
};

use super::{AttachError, KernelCounters};
use crate::error_chain;

pub(super) struct Slots {
    table: Array<MapData, LinkSlot>,
    more: BpfHashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// Slots no link holds, taken from the end.
    free: Vec<u32>,
    /// Each link's slot, and whether it sits in the table (else in `more`).
    held: HashMap<u32, (u32, bool)>,
    cpus: usize,
}

impl Slots {
    /// How many counter entries `links` slots need (slot 0 included).
    pub fn counter_entries(links: u32) -> u32 {
        (links + 1) * COUNTERS_LEN
    }

    pub fn new(
        table: Array<MapData, LinkSlot>,
        more: BpfHashMap<MapData, u32, u32>,
        counters: PerCpuArray<MapData, u64>,
        links: u32,
    ) -> Result<Self, AttachError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| AttachError::load(e))?;
        Ok(Self {
            table,
            more,
            counters,
            // Slot 0 is for packets of no known link.
            free: (1..=links).rev().collect(),
            held: HashMap::new(),
            cpus,
        })
    }

    /// Gives `ifindex` a slot with zeroed counters.
    pub fn assign(&mut self, ifindex: u32) -> Result<u32, AttachError> {
        if let Some(&(slot, _)) = self.held.get(&ifindex) {
            return Ok(slot);
        }
        let slot = self.free.pop().ok_or(AttachError::TooManyLinks {
            max: self.held.len(),
        })?;
        let at = ifindex % LINK_TABLE_LEN;
        let entry_free = self
            .table
            .get(&at, 0)
            .map_or(true, |e| e.ifindex == 0 || e.ifindex == ifindex);
        let written = if entry_free {
            self.table.set(at, LinkSlot { ifindex, slot }, 0)
        } else {
            self.more.insert(ifindex, slot, 0)
        };
        if let Err(e) = written {
            self.free.push(slot);
            return Err(AttachError::load(e));
        }
        self.held.insert(ifindex, (slot, entry_free));
        Ok(slot)
    }

    /// Takes the slot back from `ifindex`, returning its final counts.
    pub fn release(&mut self, ifindex: u32) -> KernelCounters {
        let Some((slot, in_table)) = self.held.remove(&ifindex) else {
            return KernelCounters::default();
        };
        let counts = self.counters(slot);
        let cleared = if in_table {
            self.table
                .set(ifindex % LINK_TABLE_LEN, LinkSlot::default(), 0)
        } else {
            self.more.remove(&ifindex)
        };
        let zeroed = cleared.map_err(|e| error_chain(&e)).and_then(|()| {
            (0..COUNTERS_LEN).try_for_each(|c| {
                let zero =
                    PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(|e| e.to_string())?;
                self.counters
                    .set(slot * COUNTERS_LEN + c, zero, 0)
                    .map_err(|e| error_chain(&e))
            })
        });
        match zeroed {
            Ok(()) => self.free.push(slot),
            // Never expected; the slot is not reused with stale numbers.
            Err(e) => crate::verbose(format_args!("counter slot {slot} not reused: {e}")),
        }
        counts
    }

    /// The slot of a link that has one.
    pub fn slot(&self, ifindex: u32) -> Option<u32> {
        self.held.get(&ifindex).map(|&(slot, _)| slot)
    }

    /// The counts so far of an attached link.
    pub fn counters_of(&self, ifindex: u32) -> KernelCounters {
        self.held
            .get(&ifindex)
            .map_or_else(KernelCounters::default, |&(slot, _)| self.counters(slot))
    }

    /// Packets counted without a known link (never expected).
    pub fn unattributed(&self) -> KernelCounters {
        self.counters(SLOT_UNATTRIBUTED)
    }

    fn counters(&self, slot: u32) -> KernelCounters {
        let sum = |counter: u32| -> u64 {
            self.counters
                .get(&(slot * COUNTERS_LEN + counter), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        let (passed, filtered) = (sum(COUNTER_PASSED), sum(COUNTER_FILTERED));
        KernelCounters {
            seen: passed + filtered,
            lost: sum(COUNTER_LOST),
            filtered,
        }
    }
}
