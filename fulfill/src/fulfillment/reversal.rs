//! Taking credits back when money goes back: refunds and disputes.
//!
//! Policy (configurable, `FULFILL_REFUND_POLICY`):
//! - `proportional` (default): after refunds totalling R of a charge of A, a session that
//!   credited C has had ⌈C·R/A⌉ credits taken back (rounded up: a refund never leaves the
//!   customer with credits they did not pay for). Each refund's entry is the step it adds,
//!   so two partial refunds come to the same total as one of their sum.
//! - `all_or_nothing`: any refund takes back every credit of the session.
//!
//! A dispute takes back what is left when it opens (or closes lost); a dispute won (or an
//! inquiry closed without a chargeback) gives back exactly what it took. Entries are keyed
//! by the refund/dispute id, so every event can be delivered any number of times. Nothing
//! ever takes back more than the session credited; a balance may go negative (the credits
//! were spent), and the session is then flagged for attention.

use std::str::FromStr;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use shared::{envelope::EventEnvelope, ids::CheckoutSessionId};
use tracing::Instrument;

use super::{EventOutcome, Fulfiller, Trigger};
use crate::{
    db::{
        self,
        ledger::{self, NewEntry},
        sessions::{self, SessionState, SessionUpdate},
    },
    error::FulfillError,
    stripe::{
        charge::{self, Refund},
        checkout_session::Expandable,
    },
};

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

/// For each refund in order, the total credits to have taken back once it is counted.
pub fn refund_targets(
    policy: RefundPolicy,
    credits: i64,
    charge_amount: i64,
    refunds: &[(String, i64)],
) -> Vec<(String, i64)> {
    let mut cumulative: i128 = 0;
    refunds
        .iter()
        .map(|(id, amount)| {
            cumulative += i128::from(*amount);
            let target = match policy {
                RefundPolicy::AllOrNothing => credits,
                RefundPolicy::Proportional if charge_amount <= 0 => credits,
                RefundPolicy::Proportional => {
                    let num = i128::from(credits) * cumulative;
                    let den = i128::from(charge_amount);
                    let ceil = (num + den - 1) / den;
                    i64::try_from(ceil.min(i128::from(credits))).unwrap_or(credits)
                }
            };
            (id.clone(), target.max(0))
        })
        .collect()
}

/// What a reversal event asks for, once its objects are fetched.
enum Action {
    Refunds {
        charge_amount: i64,
        refunds: Vec<Refund>,
    },
    /// Take back what is left (dispute opened, or closed lost).
    Dispute { id: String },
    /// Give back what the dispute took (won, or an inquiry closed without chargeback).
    DisputeWon { id: String },
    /// A dispute state that changes nothing.
    Nothing,
}

impl Fulfiller {
    /// Handles `charge.refunded`, `charge.dispute.created` and `charge.dispute.closed`.
    pub(super) async fn handle_reversal(
        &self,
        envelope: &EventEnvelope,
    ) -> Result<EventOutcome, FulfillError> {
        let object_id = envelope
            .object_id()
            .ok_or_else(|| FulfillError::Malformed("data.object.id is missing".into()))?;
        let (charge_id, dispute) = if envelope.event_type == "charge.refunded" {
            (object_id, None)
        } else {
            let dispute = charge::fetch_dispute(&self.stripe, &object_id).await?;
            (dispute.charge.id().to_owned(), Some(dispute))
        };
        let charge = charge::fetch(&self.stripe, &charge_id).await?;
        let payment_intent = charge
            .payment_intent
            .as_ref()
            .map(Expandable::id)
            .map(str::to_owned);
        let Some(session_id) = self.session_for(payment_intent.as_deref()).await? else {
            return self.record_only(envelope, "not_from_checkout").await;
        };
        // The `fulfill.event` span this runs in.
        tracing::Span::current().record("session_id", session_id.as_str());
        let action = match dispute {
            None => Action::Refunds {
                charge_amount: charge.amount,
                refunds: charge::refunds(&self.stripe, &charge.id)
                    .await?
                    .into_iter()
                    .filter(Refund::counts)
                    .collect(),
            },
            Some(d) => match (envelope.event_type.as_str(), d.status.as_str()) {
                ("charge.dispute.created", _) | (_, "lost") => Action::Dispute { id: d.id },
                (_, "won" | "warning_closed") => Action::DisputeWon { id: d.id },
                _ => Action::Nothing,
            },
        };
        let policy = self.refund_policy;
        let mut conn = self.pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let transaction = db::transaction_span();
        let outcome = conn
            .transaction(async |conn: &mut AsyncPgConnection| {
                apply(conn, &session_id, envelope, &action, policy).await
            })
            .instrument(transaction.clone())
            .await
            .inspect_err(|e| e.record_on(&transaction))?;
        if outcome == "flagged" {
            self.metrics.needs_attention.inc();
            tracing::warn!(session_id = %session_id, "a reversal left the balance negative");
        }
        Ok(EventOutcome::Reversal(outcome))
    }

    /// The Checkout Session paid by `payment_intent`: from our records, else from Stripe
    /// (and then fulfilled first, so that there is something to reverse).
    async fn session_for(
        &self,
        payment_intent: Option<&str>,
    ) -> Result<Option<CheckoutSessionId>, FulfillError> {
        let Some(pi) = payment_intent else {
            return Ok(None);
        };
        {
            let mut conn = self.pool.get().await?;
            if let Some(row) = sessions::find_by_payment_intent(&mut conn, pi).await? {
                return CheckoutSessionId::parse(row.session_id)
                    .map(Some)
                    .map_err(|e| FulfillError::Malformed(e.to_string()));
            }
        }
        let Some(id) = charge::session_for_payment_intent(&self.stripe, pi).await? else {
            return Ok(None);
        };
        let id =
            CheckoutSessionId::parse(id).map_err(|e| FulfillError::Malformed(e.to_string()))?;
        self.fulfill_session(&id, Trigger::Direct).await?;
        Ok(Some(id))
    }

    async fn record_only(
        &self,
        envelope: &EventEnvelope,
        outcome: &'static str,
    ) -> Result<EventOutcome, FulfillError> {
        let mut conn = self.pool.get().await?;
        db::events::record(
            &mut conn,
            envelope.id.as_str(),
            &envelope.event_type,
            envelope.object_id().as_deref(),
            outcome,
        )
        .await?;
        Ok(EventOutcome::Reversal(outcome))
    }
}

/// The transaction: lock the session, write the entries the action calls for, keep the
/// running total, flag a negative balance, record the event.
async fn apply(
    conn: &mut AsyncPgConnection,
    session_id: &CheckoutSessionId,
    envelope: &EventEnvelope,
    action: &Action,
    policy: RefundPolicy,
) -> Result<&'static str, FulfillError> {
    let row = sessions::lock_or_create(conn, session_id.as_str()).await?;
    let event_id = envelope.id.as_str();
    let (Some(user), Some(credits), SessionState::Credited) =
        (row.user_id.clone(), row.credits, row.state())
    else {
        db::events::record(
            conn,
            event_id,
            &envelope.event_type,
            Some(session_id.as_str()),
            "nothing_credited",
        )
        .await?;
        return Ok("nothing_credited");
    };
    let mut reversed = row.reversed_credits;
    let mut changed = false;
    let entry = |key: String, delta: i64, reason: &'static str, object: String| NewEntryOwned {
        key,
        delta,
        reason,
        object,
    };
    let mut entries: Vec<NewEntryOwned> = Vec::new();
    match action {
        Action::Refunds {
            charge_amount,
            refunds,
        } => {
            let pairs: Vec<(String, i64)> =
                refunds.iter().map(|r| (r.id.clone(), r.amount)).collect();
            let mut previous = 0;
            for (id, target) in refund_targets(policy, credits, *charge_amount, &pairs) {
                let step = target - previous;
                previous = target;
                if step > 0 {
                    entries.push(entry(format!("refund:{id}"), step, "refund", id));
                }
            }
        }
        Action::Dispute { id } => {
            entries.push(entry(
                format!("dispute:{id}"),
                credits,
                "dispute",
                id.clone(),
            ));
        }
        Action::DisputeWon { id } => {
            if let Some(taken) = ledger::find(conn, &format!("dispute:{id}")).await? {
                let key = format!("dispute_won:{id}");
                let applied = ledger::append(
                    conn,
                    &NewEntry {
                        user_id: &user,
                        delta: -taken.delta,
                        reason: "dispute_won",
                        idempotency_key: &key,
                        stripe_session_id: Some(session_id.as_str()),
                        stripe_event_id: Some(event_id),
                        stripe_object_id: Some(id),
                        ..NewEntry::default()
                    },
                )
                .await?;
                if applied {
                    reversed += taken.delta;
                    changed = true;
                }
            }
        }
        Action::Nothing => {}
    }
    for e in entries {
        // Never take back more than the session credited.
        let amount = e.delta.min(credits - reversed);
        if amount <= 0 || ledger::find(conn, &e.key).await?.is_some() {
            continue;
        }
        let applied = ledger::append(
            conn,
            &NewEntry {
                user_id: &user,
                delta: -amount,
                reason: e.reason,
                idempotency_key: &e.key,
                stripe_session_id: Some(session_id.as_str()),
                stripe_event_id: Some(event_id),
                stripe_object_id: Some(&e.object),
                ..NewEntry::default()
            },
        )
        .await?;
        if applied {
            reversed += amount;
            changed = true;
        }
    }
    let balance = ledger::balance(conn, &user).await?;
    let flag = (balance < 0).then(|| {
        format!("balance of {user} is {balance} after taking back credits of this session")
    });
    if changed || flag.is_some() {
        let update = SessionUpdate {
            reversed_credits: Some(reversed),
            attention: flag.as_deref().map(Some),
            ..SessionUpdate::default()
        };
        sessions::update(conn, session_id.as_str(), &update).await?;
    }
    let outcome = match (changed, flag.is_some()) {
        (_, true) => "flagged",
        (true, false) => "reversed",
        (false, false) => "unchanged",
    };
    db::events::record(
        conn,
        event_id,
        &envelope.event_type,
        Some(session_id.as_str()),
        outcome,
    )
    .await?;
    Ok(outcome)
}

struct NewEntryOwned {
    key: String,
    delta: i64,
    reason: &'static str,
    object: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|(id, a)| ((*id).to_owned(), *a)).collect()
    }

    #[test]
    fn a_full_refund_takes_back_everything() {
        assert_eq!(
            refund_targets(RefundPolicy::Proportional, 10, 900, &r(&[("re_1", 900)])),
            r(&[("re_1", 10)])
        );
    }

    #[test]
    fn a_partial_refund_takes_back_its_share_rounded_up() {
        assert_eq!(
            refund_targets(RefundPolicy::Proportional, 10, 900, &r(&[("re_1", 300)])),
            r(&[("re_1", 4)])
        );
        assert_eq!(
            refund_targets(RefundPolicy::Proportional, 10, 1000, &r(&[("re_1", 1)])),
            r(&[("re_1", 1)])
        );
    }

    #[test]
    fn two_partial_refunds_add_up_to_one_of_their_sum() {
        let two = refund_targets(
            RefundPolicy::Proportional,
            10,
            1000,
            &r(&[("re_1", 333), ("re_2", 667)]),
        );
        assert_eq!(two, r(&[("re_1", 4), ("re_2", 10)]));
        let one = refund_targets(RefundPolicy::Proportional, 10, 1000, &r(&[("re_1", 1000)]));
        assert_eq!(two.last().map(|t| t.1), one.last().map(|t| t.1));
    }

    #[test]
    fn never_more_than_credited() {
        let t = refund_targets(
            RefundPolicy::Proportional,
            10,
            100,
            &r(&[("re_1", 80), ("re_2", 80)]),
        );
        assert_eq!(t, r(&[("re_1", 8), ("re_2", 10)]));
    }

    #[test]
    fn all_or_nothing_takes_everything_on_any_refund() {
        assert_eq!(
            refund_targets(RefundPolicy::AllOrNothing, 10, 900, &r(&[("re_1", 1)])),
            r(&[("re_1", 10)])
        );
    }

    #[test]
    fn parses_the_policy_names() {
        assert_eq!("proportional".parse(), Ok(RefundPolicy::Proportional));
        assert_eq!("all_or_nothing".parse(), Ok(RefundPolicy::AllOrNothing));
        assert!("half".parse::<RefundPolicy>().is_err());
    }
}
