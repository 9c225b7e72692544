//! What a session's ledger should hold, as a pure function of what Stripe says now, and
//! the delta entries that move the ledger from what it holds to that target.
//!
//! A session's credits have three components:
//! - `purchase`: what the paid session bought (the credits rule, [`super::credits`]);
//! - `refunded`: what refunds take back. `proportional` (default): ⌈purchase × R ÷ A⌉
//!   where R is the total of the refunds that count (succeeded, pending, requires_action;
//!   never failed or canceled) and A the charge's amount, so two partial refunds come to
//!   the same as one of their sum whatever their order; `all_or_nothing`: any counting
//!   refund takes everything;
//! - `disputed`: what an open or lost dispute (funds withdrawn) takes: what the refunds
//!   left. A dispute won, an inquiry (`warning_*`) or a prevented one takes nothing.
//!
//! Never more than `purchase` is taken back in all. The ledger reaches the target with
//! one entry per component that moved, keyed by the component, the session, the entry's
//! ordinal and the value reached: replaying a view writes nothing, a newer view writes
//! exactly the difference, and nothing depends on the order in which cues arrived.

use std::str::FromStr;

/// How refunds translate into credits taken back (`FULFILL_REFUND_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundPolicy {
    Proportional,
    AllOrNothing,
}

impl FromStr for RefundPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proportional" => Ok(Self::Proportional),
            "all_or_nothing" => Ok(Self::AllOrNothing),
            other => Err(format!(
                "{other:?}: expected \"proportional\" or \"all_or_nothing\""
            )),
        }
    }
}

/// A refund's status (<https://docs.stripe.com/api/refunds/object#refund_object-status>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
    /// A status this build does not know; counted, since money may be going back.
    Unknown,
}

impl RefundStatus {
    pub fn parse(raw: Option<&str>) -> Self {
        match raw {
            Some("pending") => Self::Pending,
            Some("requires_action") => Self::RequiresAction,
            Some("succeeded") | None => Self::Succeeded,
            Some("failed") => Self::Failed,
            Some("canceled") => Self::Canceled,
            Some(_) => Self::Unknown,
        }
    }

    /// Money that is back with the customer, or on its way.
    pub fn counts(self) -> bool {
        !matches!(self, Self::Failed | Self::Canceled)
    }
}

/// A dispute's status (<https://docs.stripe.com/api/disputes/object#dispute_object-status>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeStatus {
    WarningNeedsResponse,
    WarningUnderReview,
    WarningClosed,
    NeedsResponse,
    UnderReview,
    Won,
    Lost,
    Prevented,
    /// A status this build does not know; treated as withdrawn funds.
    Unknown,
}

impl DisputeStatus {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "warning_needs_response" => Self::WarningNeedsResponse,
            "warning_under_review" => Self::WarningUnderReview,
            "warning_closed" => Self::WarningClosed,
            "needs_response" => Self::NeedsResponse,
            "under_review" => Self::UnderReview,
            "won" => Self::Won,
            "lost" => Self::Lost,
            "prevented" => Self::Prevented,
            _ => Self::Unknown,
        }
    }

    /// Whether the disputed funds are (still) withdrawn from the merchant: a chargeback
    /// open or lost. Inquiries withdraw nothing; a won dispute reinstates the funds.
    pub fn withdraws_funds(self) -> bool {
        matches!(
            self,
            Self::NeedsResponse | Self::UnderReview | Self::Lost | Self::Unknown
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundView {
    pub id: String,
    pub amount: i64,
    pub status: RefundStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeView {
    pub id: String,
    pub status: DisputeStatus,
}

/// The money side of a session as Stripe shows it now: its charge, every refund and
/// every dispute of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyView {
    pub charge_amount: i64,
    pub refunds: Vec<RefundView>,
    pub disputes: Vec<DisputeView>,
}

impl MoneyView {
    /// The total of the refunds that count.
    pub fn refunded_amount(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.status.counts())
            .map(|r| r.amount.max(0))
            .fold(0i64, i64::saturating_add)
    }

    pub fn funds_withdrawn(&self) -> bool {
        self.disputes.iter().any(|d| d.status.withdraws_funds())
    }
}

/// A session's credits, by component. Takebacks are positive numbers of credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Components {
    pub purchase: i64,
    pub refunded: i64,
    pub disputed: i64,
}

impl Components {
    /// What the session adds to the user's balance.
    pub fn net(&self) -> i64 {
        self.purchase - self.refunded - self.disputed
    }

    pub fn get(&self, component: Component) -> i64 {
        match component {
            Component::Purchase => self.purchase,
            Component::Refund => self.refunded,
            Component::Dispute => self.disputed,
        }
    }

    pub fn set(&mut self, component: Component, value: i64) {
        match component {
            Component::Purchase => self.purchase = value,
            Component::Refund => self.refunded = value,
            Component::Dispute => self.disputed = value,
        }
    }
}

/// The target: `purchase` credits bought (0 when the session is not creditable), and what
/// `money` takes back under `policy`.
pub fn target(purchase: i64, money: &MoneyView, policy: RefundPolicy) -> Components {
    let purchase = purchase.max(0);
    let refunded_amount = money.refunded_amount();
    let refunded = if refunded_amount == 0 {
        0
    } else {
        match policy {
            RefundPolicy::AllOrNothing => purchase,
            RefundPolicy::Proportional if money.charge_amount <= 0 => purchase,
            RefundPolicy::Proportional => {
                let num = i128::from(purchase) * i128::from(refunded_amount);
                let den = i128::from(money.charge_amount);
                let ceil = (num + den - 1) / den;
                i64::try_from(ceil.min(i128::from(purchase))).unwrap_or(purchase)
            }
        }
    };
    let disputed = if money.funds_withdrawn() {
        purchase - refunded
    } else {
        0
    };
    Components {
        purchase,
        refunded,
        disputed,
    }
}

/// The part of a session's credits a ledger entry moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Purchase,
    Refund,
    Dispute,
}

impl Component {
    pub const ALL: [Component; 3] = [Self::Purchase, Self::Refund, Self::Dispute];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Dispute => "dispute",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }

    /// +1 when the component adds to the balance, -1 when it takes back.
    fn sign(self) -> i64 {
        match self {
            Self::Purchase => 1,
            Self::Refund | Self::Dispute => -1,
        }
    }
}

/// A ledger entry's `reason` (the contract's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryReason {
    Purchase,
    Refund,
    Dispute,
    DisputeWon,
    Adjustment,
}

impl EntryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Dispute => "dispute",
            Self::DisputeWon => "dispute_won",
            Self::Adjustment => "adjustment",
        }
    }
}

/// One delta entry towards the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub component: Component,
    /// The balance change.
    pub delta: i64,
    /// The component's value once this entry is written.
    pub reached: i64,
    pub reason: EntryReason,
}

impl Move {
    /// The entry's unique key: component, session, ordinal among the session's entries of
    /// that component (1-based), value reached.
    pub fn key(&self, session_id: &str, ordinal: i64) -> String {
        format!(
            "{}:{session_id}:{ordinal}:{}",
            self.component.as_str(),
            self.reached
        )
    }
}

/// The entries that take `applied` to `target`, at most one per component.
pub fn moves(applied: Components, target: Components) -> Vec<Move> {
    Component::ALL
        .into_iter()
        .filter_map(|component| {
            let (from, to) = (applied.get(component), target.get(component));
            if from == to {
                return None;
            }
            let reason = match (component, to > from) {
                (Component::Purchase, true) => EntryReason::Purchase,
                (Component::Refund, true) => EntryReason::Refund,
                (Component::Dispute, true) => EntryReason::Dispute,
                (Component::Dispute, false) => EntryReason::DisputeWon,
                // A refund that failed after all, or a purchase corrected down.
                (Component::Refund | Component::Purchase, false) => EntryReason::Adjustment,
            };
            Some(Move {
                component,
                delta: component.sign() * (to - from),
                reached: to,
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn refund(id: &str, amount: i64, status: RefundStatus) -> RefundView {
        RefundView {
            id: id.into(),
            amount,
            status,
        }
    }

    fn money(
        charge: i64,
        refunds: &[(i64, RefundStatus)],
        disputes: &[DisputeStatus],
    ) -> MoneyView {
        MoneyView {
            charge_amount: charge,
            refunds: refunds
                .iter()
                .enumerate()
                .map(|(i, (a, s))| refund(&format!("re_{i}"), *a, *s))
                .collect(),
            disputes: disputes
                .iter()
                .enumerate()
                .map(|(i, s)| DisputeView {
                    id: format!("dp_{i}"),
                    status: *s,
                })
                .collect(),
        }
    }

    use DisputeStatus as D;
    use RefundPolicy::{AllOrNothing, Proportional};
    use RefundStatus as R;

    #[test]
    fn a_full_refund_takes_back_everything() {
        let t = target(10, &money(900, &[(900, R::Succeeded)], &[]), Proportional);
        assert_eq!((t.refunded, t.net()), (10, 0));
    }

    #[test]
    fn a_partial_refund_takes_back_its_share_rounded_up() {
        assert_eq!(
            target(10, &money(900, &[(300, R::Succeeded)], &[]), Proportional).refunded,
            4
        );
        assert_eq!(
            target(10, &money(1000, &[(1, R::Pending)], &[]), Proportional).refunded,
            1
        );
    }

    #[test]
    fn two_refunds_of_the_same_second_take_what_one_of_their_sum_takes() {
        // 10 credits for 1000; refunds of 350 and 350: ⌈10·700/1000⌉ = 7, not ⌈3.5⌉+⌈3.5⌉ = 8.
        let two = target(
            10,
            &money(1000, &[(350, R::Succeeded), (350, R::Succeeded)], &[]),
            Proportional,
        );
        assert_eq!(two.refunded, 7);
    }

    #[test]
    fn failed_and_canceled_refunds_take_nothing() {
        let t = target(
            10,
            &money(1000, &[(500, R::Failed), (500, R::Canceled)], &[]),
            Proportional,
        );
        assert_eq!(
            t,
            Components {
                purchase: 10,
                refunded: 0,
                disputed: 0
            }
        );
    }

    #[test]
    fn all_or_nothing_takes_everything_on_any_refund() {
        assert_eq!(
            target(10, &money(900, &[(1, R::Succeeded)], &[]), AllOrNothing).refunded,
            10
        );
    }

    #[test]
    fn an_open_or_lost_dispute_takes_what_refunds_left() {
        for status in [D::NeedsResponse, D::UnderReview, D::Lost] {
            let t = target(
                10,
                &money(1000, &[(300, R::Succeeded)], &[status]),
                Proportional,
            );
            assert_eq!((t.refunded, t.disputed, t.net()), (3, 7, 0), "{status:?}");
        }
    }

    #[test]
    fn a_won_dispute_an_inquiry_or_a_prevented_one_takes_nothing() {
        for status in [
            D::Won,
            D::WarningNeedsResponse,
            D::WarningUnderReview,
            D::WarningClosed,
            D::Prevented,
        ] {
            assert_eq!(
                target(10, &money(1000, &[], &[status]), Proportional).disputed,
                0
            );
        }
    }

    #[test]
    fn nothing_is_taken_back_from_a_session_that_credited_nothing() {
        let t = target(
            0,
            &money(1000, &[(1000, R::Succeeded)], &[D::Lost]),
            Proportional,
        );
        assert_eq!(t, Components::default());
    }

    #[test]
    fn moves_write_only_the_difference_with_a_reason_per_direction() {
        let applied = Components {
            purchase: 10,
            refunded: 4,
            disputed: 6,
        };
        let target = Components {
            purchase: 10,
            refunded: 7,
            disputed: 0,
        };
        assert_eq!(
            moves(applied, target),
            vec![
                Move {
                    component: Component::Refund,
                    delta: -3,
                    reached: 7,
                    reason: EntryReason::Refund
                },
                Move {
                    component: Component::Dispute,
                    delta: 6,
                    reached: 0,
                    reason: EntryReason::DisputeWon
                },
            ]
        );
        assert!(moves(target, target).is_empty());
        let failed = moves(
            target,
            Components {
                refunded: 0,
                ..target
            },
        );
        assert_eq!(failed[0].reason, EntryReason::Adjustment);
        assert_eq!(failed[0].delta, 7);
    }

    #[test]
    fn keys_name_the_component_the_session_the_ordinal_and_the_value_reached() {
        let m = &moves(
            Components::default(),
            Components {
                purchase: 10,
                ..Components::default()
            },
        )[0];
        assert_eq!(m.key("cs_1", 1), "purchase:cs_1:1:10");
    }

    #[test]
    fn parses_the_policy_names() {
        assert_eq!("proportional".parse(), Ok(Proportional));
        assert_eq!("all_or_nothing".parse(), Ok(AllOrNothing));
        assert!("half".parse::<RefundPolicy>().is_err());
    }

    fn any_money() -> impl Strategy<Value = MoneyView> {
        let refund_status = prop_oneof![
            Just(R::Pending),
            Just(R::Succeeded),
            Just(R::Failed),
            Just(R::Canceled),
            Just(R::RequiresAction)
        ];
        let dispute_status = prop_oneof![
            Just(D::NeedsResponse),
            Just(D::UnderReview),
            Just(D::Won),
            Just(D::Lost),
            Just(D::WarningClosed),
            Just(D::WarningNeedsResponse)
        ];
        (1i64..100_000).prop_flat_map(move |charge| {
            (
                Just(charge),
                prop::collection::vec((1..=charge, refund_status.clone()), 0..4),
                prop::collection::vec(dispute_status.clone(), 0..2),
            )
                .prop_map(|(charge, refunds, disputes)| money(charge, &refunds, &disputes))
        })
    }

    proptest! {
        #[test]
        fn the_target_never_takes_back_more_than_was_bought(
            purchase in 0i64..1_000_000,
            money in any_money(),
            all in any::<bool>(),
        ) {
            let policy = if all { AllOrNothing } else { Proportional };
            let t = target(purchase, &money, policy);
            prop_assert!(t.refunded >= 0 && t.disputed >= 0);
            prop_assert!(t.net() >= 0 && t.net() <= purchase);
        }

        #[test]
        fn the_refund_order_never_matters(
            purchase in 0i64..1_000_000,
            money in any_money(),
        ) {
            let mut reversed = money.clone();
            reversed.refunds.reverse();
            prop_assert_eq!(target(purchase, &money, Proportional), target(purchase, &reversed, Proportional));
        }

        #[test]
        fn moves_reach_the_target_from_anywhere(
            a in (0i64..1000, 0i64..1000, 0i64..1000),
            t in (0i64..1000, 0i64..1000, 0i64..1000),
        ) {
            let applied = Components { purchase: a.0, refunded: a.1, disputed: a.2 };
            let target = Components { purchase: t.0, refunded: t.1, disputed: t.2 };
            let mut reached = applied;
            let mut balance = applied.net();
            for m in moves(applied, target) {
                reached.set(m.component, m.reached);
                balance += m.delta;
            }
            prop_assert_eq!(reached, target);
            prop_assert_eq!(balance, target.net());
        }
    }
}
