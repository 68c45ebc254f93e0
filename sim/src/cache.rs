//! The KV cache: token slots held by the sequences in the batch, the order
//! in which waiting sequences get room, and preemption. Plain bookkeeping;
//! the engine does the waiting.

use std::collections::{BTreeMap, BTreeSet};

/// A place in the line for room: preempted sequences come before new
/// ones, and each kind goes in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Turn {
    new: bool,
    arrival: u64,
}

impl Turn {
    /// A request not yet admitted.
    pub(crate) fn new(arrival: u64) -> Turn {
        Turn { new: true, arrival }
    }

    /// A preempted sequence coming back.
    pub(crate) fn resumed(arrival: u64) -> Turn {
        Turn { new: false, arrival }
    }
}

/// What growing by one token did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Growth {
    /// There was room.
    Grew,
    /// There was none: the newest other sequence, of this arrival, was
    /// preempted to make some.
    Preempted(u64),
    /// There was none and this sequence was the newest: it is preempted.
    Itself,
}

/// A KV cache of `capacity` token slots.
#[derive(Debug)]
pub(crate) struct Cache {
    /// Slots in all.
    pub(crate) capacity: u32,
    /// Slots held.
    pub(crate) used: u32,
    /// Sequences preempted so far.
    pub(crate) preemptions: u64,
    /// Sequences holding slots, by admission order: arrival and slots held.
    holders: BTreeMap<u64, (u64, u32)>,
    /// The next admission's number.
    next: u64,
    /// Sequences waiting for room.
    waiting: BTreeSet<Turn>,
    /// Arrivals of sequences preempted by another that have not yet
    /// noticed.
    evicted: BTreeSet<u64>,
}

impl Cache {
    pub(crate) fn new(capacity: u32) -> Cache {
        Cache {
            capacity,
            used: 0,
            preemptions: 0,
            holders: BTreeMap::new(),
            next: 0,
            waiting: BTreeSet::new(),
            evicted: BTreeSet::new(),
        }
    }

    /// Share of the slots held, 0 to 1.
    pub(crate) fn usage(&self) -> f64 {
        f64::from(self.used) / f64::from(self.capacity)
    }

    /// Joins the line for room.
    pub(crate) fn queue(&mut self, turn: Turn) {
        self.waiting.insert(turn);
    }

    /// Takes `need` slots if `turn` is first in line and they are free:
    /// the holder's key, for [`Cache::grow`] and [`Cache::release`].
    pub(crate) fn admit(&mut self, turn: Turn, need: u32) -> Option<u64> {
        if self.waiting.first() != Some(&turn) || self.capacity - self.used < need {
            return None;
        }
        self.waiting.remove(&turn);
        let key = self.next;
        self.next += 1;
        self.holders.insert(key, (turn.arrival, need));
        self.used += need;
        Some(key)
    }

    /// One more slot for holder `key`, preempting the newest holder when
    /// the cache is full. A preempted sequence gives up all its slots and
    /// goes first in line for room.
    pub(crate) fn grow(&mut self, key: u64) -> Growth {
        let mut growth = Growth::Grew;
        if self.used == self.capacity {
            let Some((&newest, &(arrival, held))) = self.holders.last_key_value() else {
                return growth;
            };
            self.holders.remove(&newest);
            self.used -= held;
            self.preemptions += 1;
            self.waiting.insert(Turn::resumed(arrival));
            if newest == key {
                return Growth::Itself;
            }
            self.evicted.insert(arrival);
            growth = Growth::Preempted(arrival);
        }
        if let Some((_, held)) = self.holders.get_mut(&key) {
            *held += 1;
            self.used += 1;
        }
        growth
    }

    /// True, once, when the sequence of `arrival` was preempted by another.
    pub(crate) fn noticed(&mut self, arrival: u64) -> bool {
        self.evicted.remove(&arrival)
    }

    /// Frees holder `key`'s slots (none if it was preempted).
    pub(crate) fn release(&mut self, key: u64) {
        if let Some((_, held)) = self.holders.remove(&key) {
            self.used -= held;
        }
    }

    /// Leaves the line, and forgets a preemption not yet noticed.
    pub(crate) fn leave(&mut self, turn: Turn) {
        self.waiting.remove(&turn);
        self.evicted.remove(&turn.arrival);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_waits_its_turn_and_for_room() {
        let mut c = Cache::new(10);
        c.queue(Turn::new(1));
        c.queue(Turn::new(2));
        assert_eq!(c.admit(Turn::new(2), 1), None, "1 is first in line");
        let a = c.admit(Turn::new(1), 8).unwrap();
        assert_eq!(c.admit(Turn::new(2), 3), None, "two slots left");
        c.release(a);
        assert!(c.admit(Turn::new(2), 3).is_some());
        assert_eq!((c.used, c.usage()), (3, 0.3));
    }

    #[test]
    fn a_full_cache_preempts_the_newest_which_comes_back_first() {
        let mut c = Cache::new(6);
        for arrival in [1, 2, 3] {
            c.queue(Turn::new(arrival));
        }
        let old = c.admit(Turn::new(1), 3).unwrap();
        let young = c.admit(Turn::new(2), 3).unwrap();
        assert_eq!(c.grow(old), Growth::Preempted(2));
        assert_eq!((c.used, c.preemptions), (4, 1));
        assert!(c.noticed(2) && !c.noticed(2), "told once");
        // The preempted sequence is ahead of the new request.
        assert_eq!(c.admit(Turn::new(3), 1), None);
        assert!(c.admit(Turn::resumed(2), 2).is_some());
        c.release(young); // already gone: nothing changes
        assert_eq!(c.used, 6);
    }

    #[test]
    fn the_newest_sequence_preempts_itself() {
        let mut c = Cache::new(4);
        c.queue(Turn::new(1));
        c.queue(Turn::new(2));
        let old = c.admit(Turn::new(1), 2).unwrap();
        let young = c.admit(Turn::new(2), 2).unwrap();
        assert_eq!(c.grow(young), Growth::Itself);
        assert_eq!((c.used, c.preemptions), (2, 1));
        assert!(!c.noticed(2), "it knows already");
        assert_eq!(c.grow(old), Growth::Grew);
        c.leave(Turn::resumed(2));
        c.queue(Turn::new(3));
        assert!(c.admit(Turn::new(3), 1).is_some(), "the line is empty again");
    }
}
