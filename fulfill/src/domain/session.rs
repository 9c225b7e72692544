//! A Checkout Session's recorded state and how one fresh view of it moves that state and
//! the session's ledger components.

use diesel::{
    backend::Backend,
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::Pg,
    serialize::{self, Output, ToSql},
    sql_types::Text,
};
use serde::Serialize;
use shared::event_type::EventType;

use super::{
    credits::Decision,
    cue::Cue,
    target::{self, Components, MoneyView, Move, RefundPolicy},
};

/// The states a session moves through; `credited` is the only one nothing leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Pending,
    Credited,
    NeedsAttention,
    Failed,
    Expired,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        Self::Pending,
        Self::Credited,
        Self::NeedsAttention,
        Self::Failed,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Credited => "credited",
            Self::NeedsAttention => "needs_attention",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether a checkout cue about a session in this state can be answered without
    /// asking Stripe: the purchase of a credited session never changes again (money going
    /// back arrives as its own cues), an expired session never pays, and a failed async
    /// payment is followed by nothing but a (misordered) success, which is checked.
    pub fn settles(self, cue: &Cue) -> bool {
        match (self, cue) {
            (_, Cue::Money { .. }) => false,
            (Self::Credited, _) => true,
            (Self::Expired, Cue::Checkout(_)) => true,
            (Self::Failed, Cue::Checkout(t)) => {
                *t != EventType::CheckoutSessionAsyncPaymentSucceeded
            }
            _ => false,
        }
    }
}

impl ToSql<Text, Pg> for SessionState {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for SessionState {
    fn from_sql(bytes: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        let raw = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Self::parse(&raw).ok_or_else(|| format!("unknown session state {raw:?}").into())
    }
}

/// What fulfill has recorded of a session before a new view is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub state: SessionState,
    /// The purchase credited, once credited (frozen from then on).
    pub credited: Option<i64>,
    /// What the session's ledger entries add up to, per component.
    pub applied: Components,
}

/// What applying one view comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub state: SessionState,
    pub target: Components,
    pub moves: Vec<Move>,
}

/// The next state of a session from what it was and what Stripe says now.
pub fn next_state(current: SessionState, decision: &Decision, cue: &Cue) -> SessionState {
    match (current, decision) {
        (SessionState::Credited, _) => SessionState::Credited,
        (_, Decision::Credit { .. }) => SessionState::Credited,
        (_, Decision::NeedsAttention { .. }) => SessionState::NeedsAttention,
        (_, Decision::Expired) => SessionState::Expired,
        // Stripe's states only move forward: an unpaid view (older than what another
        // delivery recorded) never overwrites failed, expired or needs-attention.
        (SessionState::Pending, Decision::NotYetPaid { complete }) => {
            if *complete && cue.reports_failure() {
                SessionState::Failed
            } else {
                SessionState::Pending
            }
        }
        (other, Decision::NotYetPaid { .. }) => other,
    }
}

/// Applies a view: the new state, the target of the session's components and the
/// entries that reach it. A credited session keeps the purchase it was credited with.
pub fn plan(
    recorded: &Recorded,
    decision: &Decision,
    money: &MoneyView,
    cue: &Cue,
    policy: RefundPolicy,
) -> Plan {
    let state = next_state(recorded.state, decision, cue);
    let purchase = match (recorded.credited, decision) {
        (Some(credited), _) => credited,
        (None, Decision::Credit { credits, .. }) => *credits,
        (None, _) => 0,
    };
    let target = target::target(purchase, money, policy);
    Plan {
        state,
        target,
        moves: target::moves(recorded.applied, target),
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::UserId;

    use super::*;

    fn credit(n: i64) -> Decision {
        Decision::Credit {
            user: UserId::parse("u").unwrap(),
            credits: n,
        }
    }

    fn checkout(t: EventType) -> Cue {
        Cue::Checkout(t)
    }

    #[test]
    fn credited_and_expired_sessions_need_no_stripe_call_for_checkout_cues() {
        for t in EventType::ALL.iter().filter(|t| t.is_checkout()) {
            assert!(SessionState::Credited.settles(&checkout(*t)));
            assert!(SessionState::Expired.settles(&checkout(*t)));
            assert!(!SessionState::Pending.settles(&checkout(*t)));
            assert!(!SessionState::NeedsAttention.settles(&checkout(*t)));
        }
    }

    #[test]
    fn a_failed_session_is_still_checked_on_a_success_cue() {
        assert!(
            !SessionState::Failed
                .settles(&checkout(EventType::CheckoutSessionAsyncPaymentSucceeded))
        );
        assert!(SessionState::Failed.settles(&checkout(EventType::CheckoutSessionCompleted)));
    }

    #[test]
    fn money_cues_always_look_at_stripe() {
        for s in SessionState::ALL {
            assert!(!s.settles(&Cue::Money {
                event: EventType::ChargeRefunded,
                object_id: "ch_1".into(),
                watermark: crate::domain::cue::Watermark::RefundedAtLeast(1),
            }));
        }
    }

    #[test]
    fn an_unpaid_view_never_overwrites_a_later_state() {
        let unpaid = Decision::NotYetPaid { complete: true };
        for s in [
            SessionState::Failed,
            SessionState::Expired,
            SessionState::NeedsAttention,
        ] {
            assert_eq!(next_state(s, &unpaid, &Cue::Direct), s);
        }
        assert_eq!(
            next_state(
                SessionState::Pending,
                &unpaid,
                &checkout(EventType::CheckoutSessionAsyncPaymentFailed)
            ),
            SessionState::Failed
        );
        assert_eq!(
            next_state(
                SessionState::Pending,
                &unpaid,
                &checkout(EventType::CheckoutSessionCompleted)
            ),
            SessionState::Pending
        );
    }

    #[test]
    fn nothing_leaves_credited() {
        for d in [
            Decision::Expired,
            Decision::NotYetPaid { complete: false },
            Decision::NeedsAttention { reason: "x".into() },
        ] {
            assert_eq!(
                next_state(SessionState::Credited, &d, &Cue::Direct),
                SessionState::Credited
            );
        }
    }

    #[test]
    fn a_credited_session_keeps_its_purchase_whatever_the_catalogue_says_now() {
        let recorded = Recorded {
            state: SessionState::Credited,
            credited: Some(10),
            applied: Components {
                purchase: 10,
                ..Components::default()
            },
        };
        let p = plan(
            &recorded,
            &credit(99),
            &MoneyView::default(),
            &Cue::Direct,
            RefundPolicy::Proportional,
        );
        assert!(p.moves.is_empty());
    }

    #[test]
    fn a_refund_seen_before_the_credit_is_applied_at_credit_time() {
        let recorded = Recorded {
            state: SessionState::NeedsAttention,
            credited: None,
            applied: Components::default(),
        };
        let money = MoneyView {
            charge_amount: 1000,
            refunds: vec![crate::domain::target::RefundView {
                id: "re_1".into(),
                amount: 500,
                status: crate::domain::target::RefundStatus::Succeeded,
            }],
            disputes: vec![],
        };
        let p = plan(
            &recorded,
            &credit(10),
            &money,
            &Cue::Direct,
            RefundPolicy::Proportional,
        );
        assert_eq!(p.state, SessionState::Credited);
        assert_eq!(
            p.target,
            Components {
                purchase: 10,
                refunded: 5,
                disputed: 0
            }
        );
        assert_eq!(p.moves.iter().map(|m| m.delta).sum::<i64>(), 5);
    }
}
