//! The fake's catalogue, sessions, events and knobs, behind one lock.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::objects::{self, LineItem, Price, Product, Session};

/// Faults and delays applied to every Stripe API request (not to `/_fake/…`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Knobs {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Up to this much more, at random.
    pub jitter_ms: u64,
    /// Fraction (0..=1) of requests answered 429 (`rate_limit`).
    pub rate_429: f64,
    /// Fraction (0..=1) of requests answered 500/503 with `Stripe-Should-Retry: true`.
    pub rate_5xx: f64,
    /// Fraction (0..=1) of requests that hang for `hang_ms` before answering normally.
    pub rate_hang: f64,
    /// The first this many requests (that get past the limiter and the injected errors)
    /// hang for `hang_ms`, whatever `rate_hang` draws: a hang a test can count on.
    pub hang_first: u64,
    pub hang_ms: u64,
    /// Requests per second beyond which the fake answers 429, like Stripe's limiter.
    pub rate_limit_per_sec: Option<u32>,
    /// Answer every API request with this status as Stripe does for a key it refuses:
    /// 401 (revoked or rolled) or 403 (a restricted key lacking a permission).
    pub reject_key: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    /// Successful `GET /v1/checkout/sessions/{id}`.
    pub session_fetches: u64,
    /// Successful `GET /v1/checkout/sessions/{id}/line_items`.
    pub line_item_pages: u64,
    pub other_fetches: u64,
    pub injected_429: u64,
    pub injected_5xx: u64,
    pub injected_hangs: u64,
    /// 429s because the per-second limit was exceeded.
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    /// Session fetches per session id.
    pub fetches_by_session: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PriceSpec {
    /// `price.metadata.credits`, verbatim (may be invalid on purpose).
    #[serde(default)]
    pub credits: Option<String>,
    /// `price.product.metadata.credits`, verbatim.
    #[serde(default)]
    pub product_credits: Option<String>,
    #[serde(default = "default_amount")]
    pub unit_amount: i64,
    #[serde(default)]
    pub name: Option<String>,
    /// Use this id instead of a random one.
    #[serde(default)]
    pub id: Option<String>,
    /// `price.metadata.credits_valid_days`, verbatim: the credits expire that many days
    /// after the session's `created`.
    #[serde(default)]
    pub valid_days: Option<String>,
}

fn default_amount() -> i64 {
    500
}

impl PriceSpec {
    pub fn credits(n: u32) -> Self {
        Self {
            credits: Some(n.to_string()),
            product_credits: None,
            unit_amount: default_amount(),
            name: None,
            id: None,
            valid_days: None,
        }
    }

    pub fn product_credits(n: u32) -> Self {
        Self {
            credits: None,
            product_credits: Some(n.to_string()),
            ..Self::credits(0)
        }
    }

    pub fn no_credits() -> Self {
        Self {
            credits: None,
            ..Self::credits(0)
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SessionSpec {
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// `(price id, quantity)`.
    pub line_items: Vec<(String, i64)>,
    #[serde(default = "complete")]
    pub status: String,
    #[serde(default = "paid")]
    pub payment_status: String,
    /// Becomes `paid` this many milliseconds after creation (async payment methods).
    #[serde(default)]
    pub paid_after_ms: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
    /// A connected account (`acct_…`) that owns the session, its payment and its events:
    /// Stripe answers 404 for them without that `Stripe-Account` header.
    #[serde(default)]
    pub account: Option<String>,
    /// `created` (Unix seconds) instead of now: a session bought in the past.
    #[serde(default)]
    pub created: Option<i64>,
}

fn complete() -> String {
    "complete".to_owned()
}
fn paid() -> String {
    "paid".to_owned()
}

impl SessionSpec {
    /// A complete, paid session for `user` buying `quantity` of `price`.
    pub fn paid(user: &str, price: &str, quantity: i64) -> Self {
        Self {
            client_reference_id: Some(user.to_owned()),
            metadata: Map::new(),
            line_items: vec![(price.to_owned(), quantity)],
            status: complete(),
            payment_status: paid(),
            paid_after_ms: None,
            id: None,
            account: None,
            created: None,
        }
    }

    /// The same session, owned by the connected account `account`.
    pub fn on_account(mut self, account: &str) -> Self {
        self.account = Some(account.to_owned());
        self
    }

    pub fn with_status(mut self, status: &str, payment_status: &str) -> Self {
        self.status = status.to_owned();
        self.payment_status = payment_status.to_owned();
        self
    }
}

#[derive(Debug)]
struct SessionRecord {
    session: Session,
    paid_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Refund {
    id: String,
    charge: String,
    payment_intent: String,
    amount: i64,
    created: i64,
    /// `pending`, `succeeded`, `failed`, `canceled`, `requires_action`.
    status: String,
}

impl Refund {
    /// Failed and canceled refunds give the money back to the merchant.
    fn counts(&self) -> bool {
        !matches!(self.status.as_str(), "failed" | "canceled")
    }

    fn to_json(&self) -> Value {
        objects::refund_json(
            &self.id,
            &self.charge,
            &self.payment_intent,
            self.amount,
            self.created,
            &self.status,
        )
    }
}

#[derive(Debug, Clone)]
struct Dispute {
    id: String,
    charge: String,
    payment_intent: String,
    amount: i64,
    status: String,
    created: i64,
}

#[derive(Debug, Default)]
struct Inner {
    refunds: Vec<Refund>,
    disputes: Vec<Dispute>,
    knobs: Knobs,
    stats: Stats,
    products: HashMap<String, Product>,
    prices: HashMap<String, Price>,
    sessions: HashMap<String, SessionRecord>,
    /// Creation order, for the sessions list.
    session_order: Vec<String>,
    /// Events in creation order, for `GET /v1/events`.
    events: Vec<Value>,
    /// Token bucket for the rate limit: (last refill, tokens). Like Stripe's limiter it
    /// allows a burst of one second's worth, refilled continuously.
    bucket: Option<(Instant, f64)>,
}

pub struct State {
    api_key: String,
    inner: Mutex<Inner>,
}

pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..len)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{tail}")
}

/// What a gate decided for one API request.
pub(crate) enum Verdict {
    Proceed,
    Unauthorized,
    /// A restricted key without the permission.
    Forbidden,
    RateLimited,
    Inject429,
    Inject5xx,
}

impl State {
    pub fn new(api_key: &str) -> Self {
        Self {
            api_key: api_key.to_owned(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not wedge every other request.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        self.lock().knobs = knobs;
    }

    pub fn knobs(&self) -> Knobs {
        self.lock().knobs.clone()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.lock().stats = Stats::default();
    }

    pub fn create_price(&self, spec: PriceSpec) -> String {
        let mut inner = self.lock();
        let product_id = random_id("prod_", 14);
        let mut product_meta = Map::new();
        if let Some(c) = &spec.product_credits {
            product_meta.insert("credits".into(), json!(c));
        }
        let name =
            spec.name
                .clone()
                .unwrap_or_else(|| match (&spec.credits, &spec.product_credits) {
                    (Some(c), _) | (None, Some(c)) => format!("{c} credits"),
                    (None, None) => "A thing without credits".to_owned(),
                });
        inner.products.insert(
            product_id.clone(),
            Product {
                id: product_id.clone(),
                name,
                metadata: product_meta,
                created: crate::now(),
            },
        );
        let price_id = spec.id.clone().unwrap_or_else(|| random_id("price_", 24));
        let mut metadata = Map::new();
        if let Some(c) = &spec.credits {
            metadata.insert("credits".into(), json!(c));
        }
        if let Some(d) = &spec.valid_days {
            metadata.insert("credits_valid_days".into(), json!(d));
        }
        inner.prices.insert(
            price_id.clone(),
            Price {
                id: price_id.clone(),
                product: product_id,
                unit_amount: spec.unit_amount,
                currency: "usd".into(),
                metadata,
                created: crate::now(),
            },
        );
        price_id
    }

    /// Creates a session; unknown prices are refused.
    pub fn create_session(&self, spec: SessionSpec) -> Result<String, String> {
        let mut inner = self.lock();
        let mut amount_total = 0;
        let mut line_items = Vec::with_capacity(spec.line_items.len());
        for (price, quantity) in &spec.line_items {
            let p = inner
                .prices
                .get(price)
                .ok_or_else(|| format!("No such price: '{price}'"))?;
            amount_total += p.unit_amount * quantity;
            line_items.push(LineItem {
                id: random_id("li_", 24),
                price: price.clone(),
                quantity: *quantity,
            });
        }
        let id = spec.id.clone().unwrap_or_else(|| random_id("cs_test_", 58));
        let session = Session {
            id: id.clone(),
            created: spec.created.unwrap_or_else(crate::now),
            status: spec.status,
            payment_status: spec.payment_status,
            client_reference_id: spec.client_reference_id,
            metadata: spec.metadata,
            line_items,
            payment_intent: random_id("pi_", 24),
            amount_total,
            currency: "usd".into(),
            livemode: false,
            account: spec.account,
        };
        let paid_at = spec
            .paid_after_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        inner.session_order.push(id.clone());
        inner
            .sessions
            .insert(id.clone(), SessionRecord { session, paid_at });
        Ok(id)
    }

    /// Changes a session's state, as Stripe does when a customer pays or a session expires.
    pub fn update_session(
        &self,
        id: &str,
        status: Option<&str>,
        payment_status: Option<&str>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(record) = inner.sessions.get_mut(id) else {
            return false;
        };
        if let Some(s) = status {
            record.session.status = s.to_owned();
        }
        if let Some(p) = payment_status {
            record.session.payment_status = p.to_owned();
            record.paid_at = None;
        }
        true
    }

    /// Changes a price's metadata (an operator fixing the catalogue).
    pub fn set_price_credits(&self, price_id: &str, credits: Option<&str>) -> bool {
        let mut inner = self.lock();
        let Some(price) = inner.prices.get_mut(price_id) else {
            return false;
        };
        match credits {
            Some(c) => price.metadata.insert("credits".into(), json!(c)),
            None => price.metadata.remove("credits"),
        };
        true
    }

    pub(crate) fn session(&self, id: &str) -> Option<Session> {
        let mut inner = self.lock();
        let record = inner.sessions.get_mut(id)?;
        if record.paid_at.is_some_and(|at| Instant::now() >= at) {
            record.session.payment_status = "paid".into();
            record.paid_at = None;
        }
        Some(record.session.clone())
    }

    /// A price as Stripe shows it inside a line item; the product expanded or not.
    pub(crate) fn price_json(&self, price_id: &str, expand_product: bool) -> Value {
        let inner = self.lock();
        let Some(price) = inner.prices.get(price_id) else {
            return Value::Null;
        };
        let product = if expand_product {
            inner
                .products
                .get(&price.product)
                .map_or(Value::Null, Product::to_json)
        } else {
            json!(price.product)
        };
        price.to_json(product)
    }

    pub(crate) fn item_json(&self, item: &LineItem, expand_product: bool) -> Value {
        let price = self.price_json(&item.price, expand_product);
        let description = price
            .get("product")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map_or_else(|| "Credits".to_owned(), str::to_owned);
        let unit = price
            .get("unit_amount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        objects::item_json(item, price, &description, unit * item.quantity, "usd")
    }

    /// Builds a webhook event for a session as Stripe would send it (pretty-printed), and
    /// records it for `GET /v1/events`. Returns `(event id, body)`.
    pub fn event_for_session(
        &self,
        session_id: &str,
        event_type: &str,
    ) -> Option<(String, Vec<u8>)> {
        let session = self.session(session_id)?;
        Some(self.record_event(event_type, session.to_json()))
    }

    /// Records an arbitrary event (for reversals and reconciliation tests). An event about
    /// a connected account's object names the account at the top level, as Stripe does.
    pub fn record_event(&self, event_type: &str, object: Value) -> (String, Vec<u8>) {
        let id = random_id("evt_", 24);
        let account = object["id"]
            .as_str()
            .and_then(|o| self.owner_of(o))
            .flatten();
        let mut event = objects::event_json(&id, event_type, crate::now(), object, false);
        if let Some(account) = account {
            event["account"] = json!(account);
        }
        let body = serde_json::to_vec_pretty(&event).unwrap_or_default();
        self.lock().events.push(event);
        (id, body)
    }

    /// Who owns the object `id`: `Some(None)` the platform, `Some(Some(acct))` a
    /// connected account, `None` no such object.
    pub fn owner_of(&self, id: &str) -> Option<Option<String>> {
        let session = match id.split('_').next()? {
            "cs" => self.session(id),
            "ch" => self.session_by_charge(id),
            "pi" => self.session_by_payment_intent(id),
            "re" => {
                let pi = self
                    .lock()
                    .refunds
                    .iter()
                    .find(|r| r.id == id)?
                    .payment_intent
                    .clone();
                self.session_by_payment_intent(&pi)
            }
            "dp" => {
                let pi = self
                    .lock()
                    .disputes
                    .iter()
                    .find(|d| d.id == id)?
                    .payment_intent
                    .clone();
                self.session_by_payment_intent(&pi)
            }
            "evt" => {
                let event = self.event(id)?;
                return Some(event["account"].as_str().map(str::to_owned));
            }
            _ => None,
        }?;
        Some(session.account)
    }

    /// A recorded event by id.
    pub fn event(&self, id: &str) -> Option<Value> {
        self.lock().events.iter().find(|e| e["id"] == id).cloned()
    }

    /// The charge id of a session's payment (one charge per payment intent here).
    pub fn charge_id(payment_intent: &str) -> String {
        format!("ch_{}", payment_intent.trim_start_matches("pi_"))
    }

    fn session_by_payment_intent(&self, payment_intent: &str) -> Option<Session> {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .find(|r| r.session.payment_intent == payment_intent)
            .map(|r| r.session.clone())
    }

    fn session_by_charge(&self, charge: &str) -> Option<Session> {
        // The charge's id is derived from its payment intent's: look for that, cloning
        // nothing but the match.
        let payment_intent = format!("pi_{}", charge.strip_prefix("ch_")?);
        // Through `session` (not the raw record): it applies a due async payment.
        let id = self.session_by_payment_intent(&payment_intent)?.id;
        self.session(&id)
    }

    pub(crate) fn charge_json(&self, charge: &str) -> Option<Value> {
        let session = self.session_by_charge(charge)?;
        Some(self.charge_json_of(charge, &session))
    }

    /// The charge of `session` (whose id is `charge`).
    fn charge_json_of(&self, charge: &str, session: &Session) -> Value {
        let inner = self.lock();
        let refunded: i64 = inner
            .refunds
            .iter()
            .filter(|r| r.charge == charge && r.counts())
            .map(|r| r.amount)
            .sum();
        let mut v = objects::charge_json(
            charge,
            &session.payment_intent,
            session.amount_total,
            refunded,
            &session.currency,
        );
        v["disputed"] = json!(inner.disputes.iter().any(|d| d.charge == charge));
        v["captured"] = json!(true);
        v["paid"] = json!(true);
        v["created"] = json!(session.created);
        v
    }

    /// Refunds of a charge, newest first (as Stripe lists them).
    pub(crate) fn refunds_json(&self, charge: &str) -> Vec<Value> {
        let inner = self.lock();
        let mut out: Vec<Value> = inner
            .refunds
            .iter()
            .filter(|r| r.charge == charge)
            .map(Refund::to_json)
            .collect();
        out.reverse();
        out
    }

    pub(crate) fn refund_json(&self, id: &str) -> Option<Value> {
        self.lock()
            .refunds
            .iter()
            .find(|r| r.id == id)
            .map(Refund::to_json)
    }

    /// The PaymentIntent id of a session (tests compute expectations from it).
    pub fn payment_intent_of(&self, session_id: &str) -> Option<String> {
        self.session(session_id).map(|s| s.payment_intent)
    }

    /// A charge's money side now: the amount of refunds that count, and whether a
    /// dispute withdraws its funds (open or lost).
    pub fn money_of(&self, charge: &str) -> (i64, bool) {
        let inner = self.lock();
        let refunded = inner
            .refunds
            .iter()
            .filter(|r| r.charge == charge && r.counts())
            .map(|r| r.amount)
            .sum();
        let withdrawn = inner.disputes.iter().any(|d| {
            d.charge == charge
                && matches!(
                    d.status.as_str(),
                    "needs_response" | "under_review" | "lost"
                )
        });
        (refunded, withdrawn)
    }

    /// Disputes of a charge, newest first.
    pub(crate) fn disputes_json(&self, charge: &str) -> Vec<Value> {
        let ids: Vec<String> = self
            .lock()
            .disputes
            .iter()
            .rev()
            .filter(|d| d.charge == charge)
            .map(|d| d.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.dispute_json(id)).collect()
    }

    /// The session's PaymentIntent as `expand[]=payment_intent` shows it; its latest
    /// charge (once paid) expanded with `payment_intent.latest_charge`.
    pub(crate) fn payment_intent_json(&self, session: &Session, expand_charge: bool) -> Value {
        let paid = session.payment_status == "paid";
        let charge = Self::charge_id(&session.payment_intent);
        let latest_charge = match (paid, expand_charge) {
            (false, _) => Value::Null,
            (true, false) => json!(charge),
            (true, true) => self.charge_json_of(&charge, session),
        };
        json!({
            "id": session.payment_intent,
            "object": "payment_intent",
            "amount": session.amount_total,
            "currency": session.currency,
            "status": if paid { "succeeded" } else { "processing" },
            "latest_charge": latest_charge,
            "livemode": session.livemode,
        })
    }

    pub(crate) fn dispute_json(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        let d = inner.disputes.iter().find(|d| d.id == id)?;
        Some(objects::dispute_json(
            &d.id,
            &d.charge,
            &d.payment_intent,
            d.amount,
            &d.status,
            d.created,
        ))
    }

    /// Refunds `amount` (the rest of the charge when `None`) of a session's payment and
    /// records the `charge.refunded` event. Returns `(refund id, event id, event body)`.
    pub fn refund_session(
        &self,
        session_id: &str,
        amount: Option<i64>,
    ) -> Result<(String, String, Vec<u8>), String> {
        self.refund_session_with(session_id, amount, "succeeded")
    }

    /// [`Self::refund_session`] with the refund's initial status (`pending` for bank
    /// refunds that settle later).
    pub fn refund_session_with(
        &self,
        session_id: &str,
        amount: Option<i64>,
        status: &str,
    ) -> Result<(String, String, Vec<u8>), String> {
        let session = self.session(session_id).ok_or("no such session")?;
        let charge = Self::charge_id(&session.payment_intent);
        let id = random_id("re_", 24);
        {
            let mut inner = self.lock();
            let refunded: i64 = inner
                .refunds
                .iter()
                .filter(|r| r.charge == charge && r.counts())
                .map(|r| r.amount)
                .sum();
            let left = session.amount_total - refunded;
            let amount = amount.unwrap_or(left);
            if amount <= 0 || amount > left {
                return Err(format!("cannot refund {amount}: {left} left on the charge"));
            }
            // Strictly increasing creation times keep the refund order unambiguous.
            let created = inner
                .refunds
                .last()
                .map_or(crate::now(), |r| r.created.max(crate::now() - 1) + 1);
            inner.refunds.push(Refund {
                id: id.clone(),
                charge: charge.clone(),
                payment_intent: session.payment_intent.clone(),
                amount,
                created,
                status: status.to_owned(),
            });
        }
        let object = self.charge_json(&charge).ok_or("charge vanished")?;
        let (event_id, body) = self.record_event("charge.refunded", object);
        Ok((id, event_id, body))
    }

    /// Opens a dispute on a session's payment and records `charge.dispute.created`.
    /// Returns `(dispute id, event id, event body)`.
    pub fn dispute_session(&self, session_id: &str) -> Result<(String, String, Vec<u8>), String> {
        let session = self.session(session_id).ok_or("no such session")?;
        let charge = Self::charge_id(&session.payment_intent);
        let id = random_id("dp_", 24);
        self.lock().disputes.push(Dispute {
            id: id.clone(),
            charge,
            payment_intent: session.payment_intent.clone(),
            amount: session.amount_total,
            status: "needs_response".into(),
            created: crate::now(),
        });
        let object = self.dispute_json(&id).ok_or("dispute vanished")?;
        let (event_id, body) = self.record_event("charge.dispute.created", object);
        Ok((id, event_id, body))
    }

    /// Moves a refund to `status` (e.g. `failed` after it was sent) and records
    /// `charge.refund.updated`. Returns `(event id, event body)`.
    pub fn set_refund_status(
        &self,
        refund_id: &str,
        status: &str,
    ) -> Result<(String, Vec<u8>), String> {
        {
            let mut inner = self.lock();
            let r = inner
                .refunds
                .iter_mut()
                .find(|r| r.id == refund_id)
                .ok_or("no such refund")?;
            r.status = status.to_owned();
        }
        let object = self.refund_json(refund_id).ok_or("refund vanished")?;
        Ok(self.record_event("charge.refund.updated", object))
    }

    /// Moves a dispute to `status` and records `event_type` (`charge.dispute.updated`,
    /// `.funds_withdrawn`, `.funds_reinstated`, `.closed`).
    pub fn set_dispute_status(
        &self,
        dispute_id: &str,
        status: &str,
        event_type: &str,
    ) -> Result<(String, Vec<u8>), String> {
        {
            let mut inner = self.lock();
            let d = inner
                .disputes
                .iter_mut()
                .find(|d| d.id == dispute_id)
                .ok_or("no such dispute")?;
            d.status = status.to_owned();
        }
        let object = self.dispute_json(dispute_id).ok_or("dispute vanished")?;
        Ok(self.record_event(event_type, object))
    }

    /// Closes a dispute as `won` or `lost` and records `charge.dispute.closed`.
    pub fn close_dispute(
        &self,
        dispute_id: &str,
        status: &str,
    ) -> Result<(String, Vec<u8>), String> {
        self.set_dispute_status(dispute_id, status, "charge.dispute.closed")
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    pub(crate) fn sessions_in_order(&self) -> Vec<Session> {
        let ids = self.lock().session_order.clone();
        ids.iter().filter_map(|id| self.session(id)).collect()
    }

    /// Auth, rate limit and fault injection for one API request. Returns the verdict and
    /// how long to wait before answering.
    pub(crate) fn gate(&self, authorization: Option<&str>) -> (Verdict, Duration) {
        let mut inner = self.lock();
        inner.stats.requests += 1;
        let knobs = inner.knobs.clone();
        let mut delay = Duration::from_millis(knobs.latency_ms);
        if knobs.jitter_ms > 0 {
            delay += Duration::from_millis(rand::random_range(0..=knobs.jitter_ms));
        }
        let expected = format!("Bearer {}", self.api_key);
        if authorization != Some(expected.as_str()) || knobs.reject_key == Some(401) {
            inner.stats.unauthorized += 1;
            return (Verdict::Unauthorized, delay);
        }
        if knobs.reject_key == Some(403) {
            inner.stats.unauthorized += 1;
            return (Verdict::Forbidden, delay);
        }
        if let Some(limit) = knobs.rate_limit_per_sec {
            let limit = f64::from(limit.max(1));
            let now = Instant::now();
            let (last, tokens) = inner.bucket.unwrap_or((now, limit));
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * limit).min(limit);
            if tokens < 1.0 {
                inner.bucket = Some((now, tokens));
                inner.stats.rate_limited += 1;
                return (Verdict::RateLimited, delay);
            }
            inner.bucket = Some((now, tokens - 1.0));
        }
        let roll: f64 = rand::random();
        if roll < knobs.rate_429 {
            inner.stats.injected_429 += 1;
            return (Verdict::Inject429, delay);
        }
        if roll < knobs.rate_429 + knobs.rate_5xx {
            inner.stats.injected_5xx += 1;
            return (Verdict::Inject5xx, delay);
        }
        if inner.stats.injected_hangs < knobs.hang_first || rand::random::<f64>() < knobs.rate_hang
        {
            inner.stats.injected_hangs += 1;
            delay += Duration::from_millis(knobs.hang_ms);
        }
        (Verdict::Proceed, delay)
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.lock().stats);
    }
}
