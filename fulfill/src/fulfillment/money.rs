//! The money side of a session: which session a refund or dispute event is about, and
//! what its charge, refunds and disputes are now.

use serde::Deserialize;
use shared::{
    envelope::EventEnvelope,
    event_type::{EventType, ObjectKind},
    ids::CheckoutSessionId,
};

use super::Fulfiller;
use crate::{
    db::sessions,
    domain::{
        account::Account,
        cue::{Cue, Watermark},
        target::{DisputeStatus, DisputeView, MoneyView, RefundStatus, RefundView},
    },
    error::FulfillError,
    stripe::{
        StripeClient, StripeError, charge,
        checkout_session::{self, CheckoutSession},
        dispute,
        list::Expandable,
        refund,
    },
};

/// What a refund or dispute event's own object says: which payment it belongs to (ids
/// never change, so they are safe to take from the payload) and how new a view must be.
#[derive(Debug, Clone)]
pub(super) struct Hint {
    pub cue: Cue,
    pub payment_intent: Option<String>,
    /// The charge, for payloads that name it but not the payment intent.
    pub charge: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    payment_intent: Option<Expandable<charge::PaymentIntentId>>,
    #[serde(default)]
    charge: Option<Expandable<charge::Charge>>,
    #[serde(default)]
    amount_refunded: Option<i64>,
    #[serde(default)]
    status: Option<String>,
}

impl Hint {
    pub fn from_envelope(
        envelope: &EventEnvelope,
        event_type: EventType,
        object_id: &str,
    ) -> Result<Self, FulfillError> {
        let raw = envelope.data.as_ref().map_or("{}", |d| d.object.get());
        let payload: Payload = serde_json::from_str(raw)
            .map_err(|e| FulfillError::Malformed(format!("data.object: {e}")))?;
        let watermark = match event_type.object_kind() {
            ObjectKind::Refund => Watermark::Refund(RefundStatus::parse(payload.status.as_deref())),
            ObjectKind::Dispute => Watermark::Dispute(DisputeStatus::parse(
                payload.status.as_deref().unwrap_or_default(),
            )),
            ObjectKind::Charge | ObjectKind::CheckoutSession => {
                Watermark::RefundedAtLeast(payload.amount_refunded.unwrap_or(0))
            }
        };
        let charge = match event_type.object_kind() {
            ObjectKind::Charge => Some(object_id.to_owned()),
            _ => payload.charge.as_ref().map(|c| c.id().to_owned()),
        };
        Ok(Self {
            cue: Cue::Money {
                event: event_type,
                object_id: object_id.to_owned(),
                watermark,
            },
            payment_intent: payload.payment_intent.as_ref().map(|p| p.id().to_owned()),
            charge,
        })
    }
}

impl Fulfiller {
    /// The Checkout Session that made the payment a money event is about: from our
    /// records, else from Stripe. `None` when no session made it.
    pub(super) async fn session_for(
        &self,
        account: &Account,
        hint: &Hint,
    ) -> Result<Option<CheckoutSessionId>, FulfillError> {
        let stripe = self.stripe.for_account(account);
        let payment_intent = match (&hint.payment_intent, &hint.charge) {
            (Some(pi), _) => pi.clone(),
            (None, Some(charge)) => {
                let charge = charge::fetch(&stripe, charge).await?;
                match charge.payment_intent {
                    Some(pi) => pi.id().to_owned(),
                    None => return Ok(None),
                }
            }
            (None, None) => return Ok(None),
        };
        {
            let mut conn = self.pool.get().await?;
            if let Some(row) =
                sessions::find_by_payment_intent(&mut conn, account.key(), &payment_intent).await?
            {
                return CheckoutSessionId::parse(row.session_id)
                    .map(Some)
                    .map_err(|e| FulfillError::Malformed(e.to_string()));
            }
        }
        let Some(id) = checkout_session::for_payment_intent(&stripe, &payment_intent).await? else {
            return Ok(None);
        };
        CheckoutSessionId::parse(id)
            .map(Some)
            .map_err(|e| FulfillError::Malformed(e.to_string()))
    }
}

/// The session's money side now. The session retrieve expands its latest charge, which
/// says whether anything went back; refunds and disputes are listed only then (or when
/// `full`: a money event, which must see the object it announced). `None` without a
/// charge (nothing paid, or nothing that can be refunded).
pub(super) async fn fetch(
    client: &StripeClient,
    session: &CheckoutSession,
    full: bool,
) -> Result<Option<MoneyView>, StripeError> {
    let Some(pi) = &session.payment_intent else {
        return Ok(None);
    };
    let charge = match pi.object().and_then(|p| p.latest_charge.as_ref()) {
        Some(Expandable::Object(charge)) => (**charge).clone(),
        Some(Expandable::Id(id)) => charge::fetch(client, id).await?,
        None => return Ok(None),
    };
    let mut view = MoneyView {
        charge_amount: charge.amount,
        ..MoneyView::default()
    };
    if full || charge.amount_refunded > 0 {
        view.refunds = refund::list(client, &charge.id)
            .await?
            .into_iter()
            .map(|r| RefundView {
                status: RefundStatus::parse(r.status.as_deref()),
                id: r.id,
                amount: r.amount,
            })
            .collect();
    }
    if full || charge.disputed {
        view.disputes = dispute::list(client, &charge.id)
            .await?
            .into_iter()
            .map(|d| DisputeView {
                status: DisputeStatus::parse(&d.status),
                id: d.id,
            })
            .collect();
    }
    Ok(Some(view))
}
