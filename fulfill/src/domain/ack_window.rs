//! Which acks to send for the deliveries of one channel, so that most go out as one
//! `basic.ack` with `multiple` set instead of one frame (and two thread hand-offs inside
//! the AMQP client) each.
//!
//! A delivery is acked only once it is done (its effects committed, or its copy
//! confirmed), never before, as without batching. With `multiple`, one ack settles every
//! outstanding delivery up to its tag, so it may only be sent for a run of done
//! deliveries starting at the oldest unsettled one. A done delivery behind an unfinished
//! one is held, at most `limit` of them: beyond that each is acked on its own, so a slow
//! delivery (a Stripe call that times out) never holds back more than `limit` acks, and
//! the prefetch window keeps flowing. An ack names a tag the broker still has
//! outstanding (acking a settled tag is a channel error), which the window guarantees:
//! every tag leaves it exactly once.
//! <https://www.rabbitmq.com/docs/confirms#consumer-acks-multiple-parameter>

use std::collections::BTreeMap;

/// What to send after a change to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckAction {
    /// Nothing now (held behind an unfinished delivery).
    None,
    /// `basic.ack` of this tag alone.
    Single(u64),
    /// `basic.ack` of this tag with `multiple`: every outstanding one up to it.
    Multiple(u64),
}

/// The deliveries of one channel not yet settled at the broker.
#[derive(Debug, Clone)]
pub struct AckWindow {
    /// Tag → done (ready to ack). The first entry is never done after a call returns.
    pending: BTreeMap<u64, bool>,
    /// Done entries held.
    held: usize,
    limit: usize,
}

impl AckWindow {
    /// A window holding at most `limit` done deliveries behind an unfinished one.
    pub fn new(limit: usize) -> Self {
        Self {
            pending: BTreeMap::new(),
            held: 0,
            limit,
        }
    }

    /// A delivery received (tags increase on a channel).
    pub fn delivered(&mut self, tag: u64) {
        self.pending.insert(tag, false);
    }

    /// The delivery is done: what to ack now. A tag the window does not hold (received
    /// before it was made, or settled already) is acked alone, as without the window.
    pub fn done(&mut self, tag: u64) -> AckAction {
        match self.pending.get_mut(&tag) {
            Some(done) if !*done => *done = true,
            _ => return AckAction::Single(tag),
        }
        self.held += 1;
        if let Some(action) = self.release() {
            return action;
        }
        if self.held > self.limit {
            self.pending.remove(&tag);
            self.held -= 1;
            return AckAction::Single(tag);
        }
        AckAction::None
    }

    /// The delivery was settled otherwise (nacked, on its own): it leaves the window, and
    /// the done ones it held back may go.
    pub fn settled_elsewhere(&mut self, tag: u64) -> AckAction {
        if self.pending.remove(&tag) == Some(true) {
            self.held -= 1;
        }
        self.release().unwrap_or(AckAction::None)
    }

    /// Done deliveries held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The run of done deliveries at the start of the window, acked as one.
    fn release(&mut self) -> Option<AckAction> {
        let mut last = None;
        let mut n = 0;
        for (&tag, &done) in &self.pending {
            if !done {
                break;
            }
            last = Some(tag);
            n += 1;
        }
        let last = last?;
        self.pending.retain(|&tag, _| tag > last);
        self.held -= n;
        Some(if n == 1 {
            AckAction::Single(last)
        } else {
            AckAction::Multiple(last)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn in_order_completions_ack_one_by_one_and_out_of_order_ones_together() {
        let mut w = AckWindow::new(8);
        for tag in 1..=4 {
            w.delivered(tag);
        }
        assert_eq!(w.done(1), AckAction::Single(1));
        assert_eq!(w.done(3), AckAction::None);
        assert_eq!(w.done(4), AckAction::None);
        assert_eq!(w.held(), 2);
        assert_eq!(w.done(2), AckAction::Multiple(4));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn a_slow_delivery_holds_back_at_most_the_limit() {
        let mut w = AckWindow::new(2);
        for tag in 1..=5 {
            w.delivered(tag);
        }
        assert_eq!(w.done(2), AckAction::None);
        assert_eq!(w.done(3), AckAction::None);
        assert_eq!(w.done(4), AckAction::Single(4));
        assert_eq!(w.done(5), AckAction::Single(5));
        assert_eq!(w.held(), 2);
        // The slow one is nacked: the two it held go with one ack.
        assert_eq!(w.settled_elsewhere(1), AckAction::Multiple(3));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn a_tag_the_window_does_not_hold_is_acked_alone() {
        let mut w = AckWindow::new(4);
        assert_eq!(w.done(7), AckAction::Single(7));
        w.delivered(8);
        assert_eq!(w.done(8), AckAction::Single(8));
        assert_eq!(w.done(8), AckAction::Single(8));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Deliver,
        /// Finish the n-th (mod count) unfinished delivery: done, or nacked.
        Finish {
            pick: usize,
            nack: bool,
        },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                2 => Just(Step::Deliver),
                3 => (any::<usize>(), prop::bool::weighted(0.1))
                    .prop_map(|(pick, nack)| Step::Finish { pick, nack }),
            ],
            0..200,
        )
    }

    proptest! {
        /// Against a model of the broker: every ack names an outstanding tag and settles
        /// only done deliveries; nothing is settled twice; at most `limit` done ones are
        /// held; once all are finished, every done one has been acked.
        #[test]
        fn acks_settle_done_deliveries_exactly_once(limit in 0usize..6, steps in steps()) {
            let mut w = AckWindow::new(limit);
            let mut next = 1u64;
            let mut outstanding = BTreeSet::new(); // at the broker
            let mut unfinished = Vec::new();
            let mut done = BTreeSet::new();
            let mut acked = BTreeSet::new();
            let apply = |action: AckAction,
                             outstanding: &mut BTreeSet<u64>,
                             done: &BTreeSet<u64>,
                             acked: &mut BTreeSet<u64>|
             -> Result<(), TestCaseError> {
                let settled: Vec<u64> = match action {
                    AckAction::None => return Ok(()),
                    AckAction::Single(t) => {
                        prop_assert!(outstanding.contains(&t), "ack of {t}, not outstanding");
                        vec![t]
                    }
                    AckAction::Multiple(t) => {
                        prop_assert!(outstanding.contains(&t), "ack of {t}, not outstanding");
                        outstanding.range(..=t).copied().collect()
                    }
                };
                for t in settled {
                    prop_assert!(done.contains(&t), "{t} acked before it was done");
                    outstanding.remove(&t);
                    prop_assert!(acked.insert(t), "{t} acked twice");
                }
                Ok(())
            };
            let finish_all = steps.iter().cloned().chain(
                std::iter::repeat_n(Step::Finish { pick: 0, nack: false }, 200),
            );
            for step in finish_all {
                match step {
                    Step::Deliver => {
                        w.delivered(next);
                        outstanding.insert(next);
                        unfinished.push(next);
                        next += 1;
                    }
                    Step::Finish { pick, nack } => {
                        if unfinished.is_empty() {
                            continue;
                        }
                        let tag = unfinished.remove(pick % unfinished.len());
                        let action = if nack {
                            prop_assert!(outstanding.remove(&tag));
                            w.settled_elsewhere(tag)
                        } else {
                            done.insert(tag);
                            w.done(tag)
                        };
                        apply(action, &mut outstanding, &done, &mut acked)?;
                    }
                }
                prop_assert!(w.held() <= limit, "{} held, limit {limit}", w.held());
            }
            prop_assert!(outstanding.is_empty(), "left outstanding: {outstanding:?}");
            prop_assert_eq!(acked, done);
        }
    }
}
