//! A private PostgreSQL database per test, dropped (with its connections) on `Drop`.

use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The maintenance database tests create their own databases from.
///
/// In clear by default: fulfill honours `sslmode` as libpq does, so against the machine's
/// PostgreSQL (Debian turns `ssl=on`) the default `prefer` would encrypt every test's
/// traffic, and unoptimised (debug-build) rustls makes the timing-bound suites miss their
/// deadlines. TLS has its own test (tests/chaos/tests/pg_tls.rs).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_owned()
    })
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database; the service under test applies its own migrations.
    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// A database of its own on the server of `admin_url` (e.g. a private server).
    pub async fn on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_owned();
        let name = crate::unique_name("test_");
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .expect("PostgreSQL must be running for the tests (see README)");
        sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = replace_database(&admin_url, &name);
        Self {
            name,
            url,
            admin_url,
        }
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }
}

/// `postgres://u@h:p/old?x` → `postgres://u@h:p/new?x`.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        crate::block_on_side(async move {
            if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
                let _ = sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "y"),
            "postgres://u:p@h/y?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h:1", "z"), "postgres://h:1/z");
    }
}
