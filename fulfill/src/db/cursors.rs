//! Where reconciliation got to: Stripe `created` (Unix seconds) of its last complete run.

use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::reconcile_cursors;

pub async fn read(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<i64>> {
    reconcile_cursors::table
        .filter(reconcile_cursors::name.eq(name))
        .select(reconcile_cursors::created_gte)
        .first::<i64>(conn)
        .await
        .optional()
}

pub async fn write(conn: &mut AsyncPgConnection, name: &str, created_gte: i64) -> QueryResult<()> {
    diesel::insert_into(reconcile_cursors::table)
        .values((
            reconcile_cursors::name.eq(name),
            reconcile_cursors::created_gte.eq(created_gte),
        ))
        .on_conflict(reconcile_cursors::name)
        .do_update()
        .set((
            reconcile_cursors::created_gte.eq(created_gte),
            reconcile_cursors::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

#[derive(diesel::QueryableByName)]
struct Epoch {
    #[diesel(sql_type = diesel::sql_types::Double)]
    value: f64,
}

/// When (Unix seconds, 0 for never) a reconciliation last went through without errors:
/// the cursor moves only then.
pub async fn last_advanced(conn: &mut AsyncPgConnection) -> QueryResult<f64> {
    diesel::sql_query(
        "SELECT coalesce(extract(epoch FROM max(updated_at)), 0)::float8 AS value \
         FROM reconcile_cursors",
    )
    .get_result::<Epoch>(conn)
    .await
    .map(|e| e.value)
}
