//! What set a convergence off, and whether a fresh view of Stripe answers it.
//!
//! A cue is never applied for its meaning; it only says "look again". But a view can be
//! older than the cue (Stripe's reads can lag its own webhooks by a moment): a view that
//! does not yet show what the cue announced is retried later, not recorded as done.

use shared::event_type::EventType;

use super::target::{DisputeStatus, MoneyView, RefundStatus};
use crate::stripe::checkout_session::SessionStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cue {
    /// A `checkout.session.*` event.
    Checkout(EventType),
    /// A refund or dispute event, about the charge, refund or dispute `object_id`, with
    /// what its payload said (only as a bar the view must reach, never as the truth).
    Money {
        event: EventType,
        object_id: String,
        watermark: Watermark,
    },
    /// The success page, an operator, reconciliation's sweep: no announcement to wait for.
    Direct,
}

impl Cue {
    /// `checkout.session.async_payment_failed`: an unpaid complete session then failed.
    pub fn reports_failure(&self) -> bool {
        *self == Self::Checkout(EventType::CheckoutSessionAsyncPaymentFailed)
    }

    pub fn event_type(&self) -> Option<EventType> {
        match self {
            Self::Checkout(t) | Self::Money { event: t, .. } => Some(*t),
            Self::Direct => None,
        }
    }
}

/// How new a view must be to answer a money cue: what the event's own object showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// `charge.refunded`: the charge's `amount_refunded`.
    RefundedAtLeast(i64),
    /// A refund event: the refund with at least this status.
    Refund(RefundStatus),
    /// A dispute event: the dispute with at least this status.
    Dispute(DisputeStatus),
}

fn refund_rank(s: RefundStatus) -> u8 {
    match s {
        RefundStatus::Pending => 0,
        RefundStatus::RequiresAction => 1,
        RefundStatus::Succeeded | RefundStatus::Unknown => 2,
        RefundStatus::Failed | RefundStatus::Canceled => 3,
    }
}

fn dispute_rank(s: DisputeStatus) -> u8 {
    match s {
        DisputeStatus::WarningNeedsResponse | DisputeStatus::NeedsResponse => 0,
        DisputeStatus::WarningUnderReview | DisputeStatus::UnderReview => 1,
        DisputeStatus::WarningClosed
        | DisputeStatus::Won
        | DisputeStatus::Lost
        | DisputeStatus::Prevented
        | DisputeStatus::Unknown => 2,
    }
}

/// What a view says, as far as answering a cue goes.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub status: Option<SessionStatus>,
    pub paid: bool,
    /// The money side, when it was read in full (refunds and disputes listed).
    pub money: Option<&'a MoneyView>,
}

/// Whether `seen` is at least as new as what `cue` announced.
pub fn answers(cue: &Cue, seen: Seen<'_>) -> bool {
    match cue {
        Cue::Direct => true,
        // A session that is no longer open has moved on at least as far as any checkout
        // event announced (complete and expired are final); a success needs payment.
        Cue::Checkout(t) => match t {
            EventType::CheckoutSessionAsyncPaymentSucceeded => seen.paid,
            _ => matches!(
                seen.status,
                Some(SessionStatus::Complete | SessionStatus::Expired)
            ),
        },
        Cue::Money {
            object_id,
            watermark,
            ..
        } => {
            let Some(money) = seen.money else {
                return false;
            };
            match watermark {
                Watermark::RefundedAtLeast(amount) => {
                    // Every refund the charge showed, failed ones included, is listed.
                    money.refunds.iter().map(|r| r.amount).sum::<i64>() >= *amount
                }
                Watermark::Refund(status) => money
                    .refunds
                    .iter()
                    .any(|r| &r.id == object_id && refund_rank(r.status) >= refund_rank(*status)),
                Watermark::Dispute(status) => money
                    .disputes
                    .iter()
                    .any(|d| &d.id == object_id && dispute_rank(d.status) >= dispute_rank(*status)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::target::DisputeView;

    fn seen(status: SessionStatus, paid: bool) -> Seen<'static> {
        Seen {
            status: Some(status),
            paid,
            money: None,
        }
    }

    #[test]
    fn an_async_success_is_answered_only_by_a_paid_view() {
        let cue = Cue::Checkout(EventType::CheckoutSessionAsyncPaymentSucceeded);
        assert!(!answers(&cue, seen(SessionStatus::Complete, false)));
        assert!(answers(&cue, seen(SessionStatus::Complete, true)));
    }

    #[test]
    fn a_session_read_as_still_open_answers_no_checkout_event() {
        for t in EventType::ALL.iter().filter(|t| t.is_checkout()) {
            assert!(!answers(
                &Cue::Checkout(*t),
                seen(SessionStatus::Open, false)
            ));
        }
        let cue = Cue::Checkout(EventType::CheckoutSessionCompleted);
        assert!(answers(&cue, seen(SessionStatus::Complete, false)));
        // Stripe says now that it expired: that is the truth to apply.
        assert!(answers(&cue, seen(SessionStatus::Expired, false)));
    }

    #[test]
    fn a_dispute_cue_needs_a_view_that_lists_the_dispute() {
        let cue = Cue::Money {
            event: EventType::ChargeDisputeCreated,
            object_id: "dp_1".into(),
            watermark: Watermark::Dispute(DisputeStatus::NeedsResponse),
        };
        assert!(!answers(&cue, seen(SessionStatus::Complete, true)));
        let mut money = MoneyView::default();
        fn with(m: &MoneyView) -> Seen<'_> {
            Seen {
                status: Some(SessionStatus::Complete),
                paid: true,
                money: Some(m),
            }
        }
        assert!(!answers(&cue, with(&money)));
        money.disputes.push(DisputeView {
            id: "dp_1".into(),
            status: DisputeStatus::Won,
        });
        assert!(answers(&cue, with(&money)));
        // A view newer than the event's own object answers it too.
        let closed = Cue::Money {
            event: EventType::ChargeDisputeClosed,
            object_id: "dp_1".into(),
            watermark: Watermark::Dispute(DisputeStatus::UnderReview),
        };
        assert!(answers(&closed, with(&money)));
        money.disputes[0].status = DisputeStatus::NeedsResponse;
        assert!(!answers(&closed, with(&money)));
    }
}
