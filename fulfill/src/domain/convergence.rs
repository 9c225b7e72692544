//! Property: whatever the order, duplication and lateness of the cues, fulfill's decisions
//! take a session's ledger to the target of Stripe's final state, and every balance on
//! the way is the target of a state Stripe really was in.
//!
//! A generated history (card or async payment, 0-3 refunds including partial and failed
//! ones, 0-1 dispute along any status path) emits one event per change. Each event is
//! delivered 1-3 times, each copy late by 0-4 steps; Stripe's reads lag its writes by up
//! to 2 steps (a frontier that only moves forward). Each delivery runs the same domain
//! functions as `crate::fulfillment`: the dedupe and settled shortcuts, `answers`
//! (retry when the view is older than the cue) and `plan`.

use std::collections::HashSet;

use proptest::prelude::*;
use shared::{event_type::EventType, ids::UserId};

use super::{
    credits::Decision,
    cue::{self, Cue, Seen, Watermark},
    session::{self, Recorded, SessionState},
    target::{
        self, Components, DisputeStatus, DisputeView, MoneyView, RefundPolicy, RefundStatus,
        RefundView,
    },
};
use crate::stripe::checkout_session::SessionStatus;

#[derive(Debug, Clone)]
struct World {
    paid: bool,
    money: MoneyView,
}

#[derive(Debug, Clone)]
struct Event {
    id: usize,
    cue: Cue,
}

#[derive(Debug, Clone)]
enum Change {
    Refund { amount: i64, status: RefundStatus },
    RefundBecomes { index: usize, status: RefundStatus },
    Dispute,
    DisputeBecomes(DisputeStatus),
}

#[derive(Debug, Clone)]
struct History {
    credits: i64,
    worlds: Vec<World>,
    events: Vec<(usize, Event)>,
}

fn history(
    credits: i64,
    charge: i64,
    is_async: bool,
    fails: bool,
    refunds: Vec<(u8, RefundStatus, Option<RefundStatus>)>,
    dispute: Option<Vec<DisputeStatus>>,
    order: Vec<u8>,
) -> History {
    let mut world = World {
        paid: !is_async,
        money: MoneyView {
            charge_amount: charge,
            ..MoneyView::default()
        },
    };
    let mut worlds = vec![world.clone()];
    let mut events = vec![(
        0,
        Event {
            id: 0,
            cue: Cue::Checkout(EventType::CheckoutSessionCompleted),
        },
    )];
    let mut emit = |world: &World, cue: Cue, worlds: &mut Vec<World>| {
        worlds.push(world.clone());
        let at = worlds.len() - 1;
        events.push((at, Event { id: at, cue }));
    };
    if is_async {
        if fails {
            emit(
                &world,
                Cue::Checkout(EventType::CheckoutSessionAsyncPaymentFailed),
                &mut worlds,
            );
            return History {
                credits,
                worlds,
                events,
            };
        }
        world.paid = true;
        emit(
            &world,
            Cue::Checkout(EventType::CheckoutSessionAsyncPaymentSucceeded),
            &mut worlds,
        );
    }
    // Money changes: each refund (and its later status), then the dispute path, mixed.
    let mut changes: Vec<Vec<Change>> = Vec::new();
    let mut left = charge;
    for (i, (share, status, later)) in refunds.into_iter().enumerate() {
        let amount = (left * i64::from(share) / 100).max(1).min(left);
        if left <= 0 {
            break;
        }
        left -= amount;
        let mut steps = vec![Change::Refund { amount, status }];
        if let Some(l) = later {
            steps.push(Change::RefundBecomes {
                index: i,
                status: l,
            });
        }
        changes.push(steps);
    }
    if let Some(path) = dispute {
        let mut steps = vec![Change::Dispute];
        steps.extend(path.into_iter().map(Change::DisputeBecomes));
        changes.push(steps);
    }
    let mut o = order.into_iter().cycle();
    while changes.iter().any(|c| !c.is_empty()) {
        let live: Vec<usize> = (0..changes.len())
            .filter(|i| !changes[*i].is_empty())
            .collect();
        let pick = live[usize::from(o.next().unwrap_or(0)) % live.len()];
        let change = changes[pick].remove(0);
        let cue = match change {
            Change::Refund { amount, status } => {
                world.money.refunds.push(RefundView {
                    id: format!("re_{pick}"),
                    amount,
                    status,
                });
                let refunded = world.money.refunds.iter().map(|r| r.amount).sum();
                Cue::Money {
                    event: EventType::ChargeRefunded,
                    object_id: "ch_1".into(),
                    watermark: Watermark::RefundedAtLeast(refunded),
                }
            }
            Change::RefundBecomes { index, status } => {
                let id = format!("re_{index}");
                if let Some(r) = world.money.refunds.iter_mut().find(|r| r.id == id) {
                    r.status = status;
                }
                Cue::Money {
                    event: EventType::ChargeRefundUpdated,
                    object_id: id,
                    watermark: Watermark::Refund(status),
                }
            }
            Change::Dispute => {
                world.money.disputes.push(DisputeView {
                    id: "dp_1".into(),
                    status: DisputeStatus::NeedsResponse,
                });
                Cue::Money {
                    event: EventType::ChargeDisputeCreated,
                    object_id: "dp_1".into(),
                    watermark: Watermark::Dispute(DisputeStatus::NeedsResponse),
                }
            }
            Change::DisputeBecomes(status) => {
                world.money.disputes[0].status = status;
                let event = match status {
                    DisputeStatus::Won | DisputeStatus::Lost => EventType::ChargeDisputeClosed,
                    _ => EventType::ChargeDisputeUpdated,
                };
                Cue::Money {
                    event,
                    object_id: "dp_1".into(),
                    watermark: Watermark::Dispute(status),
                }
            }
        };
        emit(&world, cue, &mut worlds);
    }
    History {
        credits,
        worlds,
        events,
    }
}

/// fulfill's view of the session, advanced by the domain functions alone.
struct Fulfill {
    recorded: Recorded,
    processed: HashSet<usize>,
    balance: i64,
    policy: RefundPolicy,
}

impl Fulfill {
    /// One delivery against Stripe's state `world`; false when it must be retried.
    fn deliver(&mut self, event: &Event, world: &World, credits: i64) -> bool {
        if self.processed.contains(&event.id) {
            return true;
        }
        if self.recorded.state.settles(&event.cue) {
            self.processed.insert(event.id);
            return true;
        }
        let decision = if world.paid {
            Decision::Credit {
                user: UserId::parse("alice").unwrap(),
                credits,
            }
        } else {
            Decision::NotYetPaid { complete: true }
        };
        let seen = Seen {
            status: Some(SessionStatus::Complete),
            paid: world.paid,
            money: Some(&world.money),
        };
        if !cue::answers(&event.cue, seen) {
            return false;
        }
        let plan = session::plan(
            &self.recorded,
            &decision,
            &world.money,
            &event.cue,
            self.policy,
        );
        for m in &plan.moves {
            self.balance += m.delta;
            self.recorded.applied.set(m.component, m.reached);
        }
        if plan.state == SessionState::Credited && self.recorded.credited.is_none() {
            self.recorded.credited = Some(plan.target.purchase);
        }
        self.recorded.state = plan.state;
        self.processed.insert(event.id);
        true
    }
}

fn target_of(world: &World, credits: i64, policy: RefundPolicy) -> Components {
    target::target(if world.paid { credits } else { 0 }, &world.money, policy)
}

fn refund_status() -> impl Strategy<Value = RefundStatus> {
    prop_oneof![
        Just(RefundStatus::Pending),
        Just(RefundStatus::Succeeded),
        Just(RefundStatus::RequiresAction)
    ]
}

fn later_refund_status() -> impl Strategy<Value = Option<RefundStatus>> {
    prop_oneof![
        Just(None),
        Just(Some(RefundStatus::Succeeded)),
        Just(Some(RefundStatus::Failed)),
        Just(Some(RefundStatus::Canceled))
    ]
}

fn dispute_path() -> impl Strategy<Value = Option<Vec<DisputeStatus>>> {
    prop_oneof![
        Just(None),
        Just(Some(vec![])),
        Just(Some(vec![DisputeStatus::UnderReview])),
        Just(Some(vec![DisputeStatus::Won])),
        Just(Some(vec![DisputeStatus::Lost])),
        Just(Some(vec![DisputeStatus::UnderReview, DisputeStatus::Won])),
        Just(Some(vec![DisputeStatus::UnderReview, DisputeStatus::Lost])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_order_duplication_and_lateness_of_cues_converges_to_the_final_target(
        credits in 1i64..200,
        charge in 1i64..100_000,
        is_async in any::<bool>(),
        fails in prop::bool::weighted(0.2),
        refunds in prop::collection::vec((1u8..=100, refund_status(), later_refund_status()), 0..=3),
        dispute in dispute_path(),
        order in prop::collection::vec(any::<u8>(), 1..8),
        deliveries in prop::collection::vec((1usize..=3, 0usize..=4, 0usize..=2), 16),
        lags in prop::collection::vec(0usize..=2, 64),
        all_or_nothing in any::<bool>(),
    ) {
        let policy = if all_or_nothing { RefundPolicy::AllOrNothing } else { RefundPolicy::Proportional };
        let h = history(credits, charge, is_async, fails, refunds, dispute, order);
        let last = h.worlds.len() - 1;
        // (time, tiebreak, event)
        let mut queue: Vec<(usize, usize, Event)> = Vec::new();
        for (n, (at, event)) in h.events.iter().enumerate() {
            let (copies, delay, spread) = deliveries[n % deliveries.len()];
            for c in 0..copies {
                queue.push((at + delay + c * spread, n * 3 + c, event.clone()));
            }
        }
        let mut fulfill = Fulfill {
            recorded: Recorded {
                state: SessionState::Pending,
                credited: None,
                applied: Components::default(),
            },
            processed: HashSet::new(),
            balance: 0,
            policy,
        };
        let mut frontier = 0usize;
        let mut steps = 0usize;
        while !queue.is_empty() {
            queue.sort_by_key(|(t, tie, _)| (*t, *tie));
            let (t, tie, event) = queue.remove(0);
            steps += 1;
            prop_assert!(steps < 10_000, "retries never end");
            let lag = lags[steps % lags.len()];
            frontier = frontier.max(t.saturating_sub(lag)).min(last);
            let world = &h.worlds[frontier];
            if !fulfill.deliver(&event, world, h.credits) {
                queue.push((t + 1, tie, event));
                continue;
            }
            // Every balance shown is that of a state Stripe really was in.
            prop_assert_eq!(fulfill.balance, fulfill.recorded.applied.net());
            prop_assert!(
                h.worlds[..=frontier].iter().any(|w| target_of(w, h.credits, policy) == fulfill.recorded.applied),
                "balance {:?} matches no state seen so far", fulfill.recorded.applied
            );
        }
        let final_target = target_of(&h.worlds[last], h.credits, policy);
        prop_assert_eq!(fulfill.recorded.applied, final_target);
        prop_assert_eq!(fulfill.balance, final_target.net());
    }
}
