//! Every Stripe event id fulfill has processed, with what came of it.

use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::stripe_events;

/// Has this event been processed (committed) before?
pub async fn seen(conn: &AsyncPgConnection, event_id: &str) -> QueryResult<bool> {
    stripe_events::table
        .select(stripe_events::event_id)
        .filter(stripe_events::event_id.eq(event_id))
        .first::<String>(&mut { conn })
        .await
        .optional()
        .map(|found| found.is_some())
}

/// An event's record, written with the statement of another write of the same
/// transaction (see [`super::ledger::announce`]) instead of one of its own.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub object_id: Option<&'a str>,
    pub outcome: &'a str,
}

/// Records an event; a second record of the same id changes nothing. Returns whether
/// this call inserted it. Takes the connection shared so that it can be pipelined with other statements.
pub async fn record(
    conn: &AsyncPgConnection,
    event_id: &str,
    event_type: &str,
    object_id: Option<&str>,
    outcome: &str,
) -> QueryResult<bool> {
    diesel::insert_into(stripe_events::table)
        .values((
            stripe_events::event_id.eq(event_id),
            stripe_events::event_type.eq(event_type),
            stripe_events::object_id.eq(object_id),
            stripe_events::outcome.eq(outcome),
        ))
        .on_conflict_do_nothing()
        .execute(&mut { conn })
        .await
        .map(|n| n == 1)
}
