//! Raw SQL that PostgreSQL prepares once per connection and reuses.
//!
//! `diesel::sql_query` (and `dsl::sql`) mark every statement unsafe to cache, so each
//! execution is parsed and planned again: on the hot write paths (a debit, a ledger
//! entry) that planning was a visible share of PostgreSQL's CPU. [`prepared`] takes SQL
//! written with `$1`, `$2`… (a placeholder may repeat) and binds, and lets diesel-async's
//! statement cache keep the prepared statement, keyed by its text.

use std::marker::PhantomData;

use diesel::{
    QueryResult,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{HasSqlType, Untyped},
};

/// A statement: static SQL and its binds (a chain of [`Bind`]).
#[derive(Debug, Clone, Copy)]
#[must_use = "queries are only executed when run"]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// No binds yet.
#[derive(Debug, Clone, Copy)]
pub struct NoBinds;

/// One more bind, the `COUNT`-th (1-based) of the chain.
#[derive(Debug, Clone, Copy)]
pub struct Bind<Prev, ST, V> {
    prev: Prev,
    value: V,
    _type: PhantomData<ST>,
}

/// Pushes the `n`-th bind (1-based) of a chain.
pub trait Binds {
    const COUNT: usize;
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for NoBinds {
    const COUNT: usize = 0;
    fn push<'b>(&'b self, n: usize, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(
            format!("placeholder ${n} has no bind").into(),
        ))
    }
}

impl<Prev: Binds, ST, V> Binds for Bind<Prev, ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    const COUNT: usize = Prev::COUNT + 1;
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if n == Self::COUNT {
            out.push_bind_param::<ST, V>(&self.value)
        } else {
            self.prev.push(n, out)
        }
    }
}

/// A statement PostgreSQL may prepare once: `sql` with `$n` placeholders.
pub fn prepared(sql: &'static str) -> Prepared<NoBinds> {
    Prepared {
        sql,
        binds: NoBinds,
    }
}

impl<B> Prepared<B> {
    /// Binds the next placeholder (`$1` first).
    pub fn bind<ST, V>(self, value: V) -> Prepared<Bind<B, ST, V>> {
        Prepared {
            sql: self.sql,
            binds: Bind {
                prev: self.binds,
                value,
                _type: PhantomData,
            },
        }
    }
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Each `$n` becomes the bind's own placeholder (diesel numbers them in order; a
        // repeated `$n` binds its value again).
        let sql = self.sql;
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|_| diesel::result::Error::QueryBuilderError("bad placeholder".into()))?;
            self.binds.push(n, &mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use diesel::{
        debug_query,
        sql_types::{BigInt, Text},
    };

    use super::*;

    #[test]
    fn placeholders_become_binds_in_order_and_a_repeated_one_binds_again() {
        let q = prepared("SELECT $2::text, $1::int8, $2::text, '$x'")
            .bind::<BigInt, _>(7_i64)
            .bind::<Text, _>("a");
        let shown = debug_query::<Pg, _>(&q).to_string();
        assert!(
            shown.starts_with("SELECT $1::text, $2::int8, $3::text, '$x'"),
            "{shown}"
        );
        assert!(shown.contains(r#"["a", 7, "a"]"#), "{shown}");
    }
}
