//! Which of global's addresses (`zone run --global-address`, repeated or separated by commas) the
//! zone dials next, as a pure state machine ([`Rotation`]) the sync client drives. Attempts go in
//! rounds: a round tries the addresses in the order they were given, moving to the next one at once
//! when one is unreachable, refuses the stream or goes silent; only when every address of the round
//! has failed does the zone wait (the backoff of `dial::Redial`) before the next round, which starts
//! again from the first address. A working connection is kept until it fails, however far down the
//! list it is (no return to the first address while connected, so a zone does not drop a good stream
//! to chase its preference). When a connection that had lasted fails, the next round is the list in
//! its order with the address that just failed put last. With one address every failure waits the
//! backoff, as it always did.

/// What the client does next: dial `index` at once, or wait the backoff first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Dial this address now: others of the round are still untried.
    Now(usize),
    /// The round is over: wait the backoff, then dial this address (the first one).
    AfterBackoff(usize),
}

impl Step {
    /// The address to dial.
    pub fn index(self) -> usize {
        match self {
            Step::Now(i) | Step::AfterBackoff(i) => i,
        }
    }
}

/// The order of the current round and how far into it the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    order: Vec<usize>,
    pos: usize,
}

impl Rotation {
    /// A first round over `n` addresses (at least one), in their order.
    pub fn new(n: usize) -> Self {
        assert!(n > 0, "at least one global address");
        Self {
            order: (0..n).collect(),
            pos: 0,
        }
    }

    /// The address being dialed, or connected to.
    pub fn current(&self) -> usize {
        self.order[self.pos]
    }

    /// The current address failed before its connection lasted: it was unreachable, refused the
    /// stream, went silent, or its stream ended soon after it was up.
    pub fn failed(&mut self) -> Step {
        self.pos += 1;
        if self.pos < self.order.len() {
            return Step::Now(self.current());
        }
        self.order.sort_unstable();
        self.pos = 0;
        Step::AfterBackoff(self.current())
    }

    /// The current address's connection failed after it had lasted: a new round, the list in its
    /// order with that address last. With one address, the backoff comes first as for any failure.
    pub fn lost(&mut self) -> Step {
        let gone = self.current();
        if self.order.len() == 1 {
            return Step::AfterBackoff(gone);
        }
        let n = self.order.len();
        self.order = (0..n).filter(|&i| i != gone).chain([gone]).collect();
        self.pos = 0;
        Step::Now(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_always_waits_the_backoff() {
        let mut r = Rotation::new(1);
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(), Step::AfterBackoff(0));
        assert_eq!(r.failed(), Step::AfterBackoff(0));
        assert_eq!(r.lost(), Step::AfterBackoff(0));
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn failures_move_on_at_once_until_the_round_is_over_then_restart_from_the_first() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(), Step::Now(1));
        assert_eq!(r.failed(), Step::Now(2));
        assert_eq!(r.failed(), Step::AfterBackoff(0));
        assert_eq!(r.failed(), Step::Now(1));
    }

    #[test]
    fn a_working_address_is_kept_and_its_loss_tries_the_others_in_order_first() {
        let mut r = Rotation::new(3);
        assert_eq!(r.failed(), Step::Now(1));
        // Connected to 1: nothing moves while it works; it fails after lasting.
        assert_eq!(r.current(), 1);
        assert_eq!(r.lost(), Step::Now(0));
        assert_eq!(r.failed(), Step::Now(2));
        assert_eq!(r.failed(), Step::Now(1));
        // Every address failed in this round: back to the preference order after the backoff.
        assert_eq!(r.failed(), Step::AfterBackoff(0));
        assert_eq!(r.failed(), Step::Now(1));
    }

    #[test]
    fn losing_the_last_address_starts_over_from_the_first() {
        let mut r = Rotation::new(2);
        assert_eq!(r.failed(), Step::Now(1));
        assert_eq!(r.lost(), Step::Now(0));
        assert_eq!(r.lost(), Step::Now(1));
        assert_eq!(r.failed(), Step::Now(0));
        assert_eq!(r.failed(), Step::AfterBackoff(0));
    }

    #[test]
    fn a_connection_that_did_not_last_counts_as_a_failure_of_the_round() {
        // 0 accepts and drops the stream at once, 1 is unreachable: the round ends and waits,
        // instead of flapping between them without pause.
        let mut r = Rotation::new(2);
        assert_eq!(r.failed(), Step::Now(1));
        assert_eq!(r.failed(), Step::AfterBackoff(0));
    }
}
