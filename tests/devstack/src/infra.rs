//! RabbitMQ and PostgreSQL for `devstack up`: the configured ones when they answer (as on
//! CI and any machine where they run), else private ones started from the installed
//! packages ([`test_support::services`]) with their data under the data folder, on the
//! configured ports or free ones when those are taken.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use lapin::{Connection, ConnectionProperties};
use test_support::services::{
    self, Launch, POSTGRES_INSTALL, PrivatePostgres, PrivateRabbit, RABBITMQ_INSTALL,
};

use crate::stack::without_password;

/// How long a configured address gets to answer before devstack runs its own server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker and database in use, and the private servers behind them, if any.
pub struct Infra {
    pub amqp_url: String,
    pub database_url: String,
    pub rabbit: Option<PrivateRabbit>,
    pub postgres: Option<PrivatePostgres>,
}

impl Infra {
    /// Stops the private servers (broker first; the database last), printing each.
    pub async fn stop(&mut self) {
        if let Some(rabbit) = self.rabbit.take() {
            stop_one("private RabbitMQ", rabbit, PrivateRabbit::try_stop).await;
        }
        if let Some(pg) = self.postgres.take() {
            stop_one("private PostgreSQL", pg, PrivatePostgres::try_shutdown).await;
        }
    }
}

/// Runs the (blocking) stop off the runtime's threads and prints how it went; the server's
/// `Drop` then keeps its data.
async fn stop_one<T: Send + 'static>(name: &str, server: T, stop: fn(&T) -> std::io::Result<()>) {
    let stopped = tokio::task::spawn_blocking(move || stop(&server)).await;
    match stopped {
        Ok(Ok(())) => println!("{name} stopped"),
        Ok(Err(e)) => println!("{name}: {e}"),
        Err(e) => println!("{name}: {e}"),
    }
}

/// `Ok` when a broker accepts a login at `url`, else why not.
async fn amqp_answers(url: &str) -> Result<(), String> {
    let connect = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no AMQP answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// `Ok` when PostgreSQL accepts a connection to the `postgres` database next to `url`'s.
async fn postgres_answers(url: &str) -> Result<(), String> {
    let admin = admin_url(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(PROBE_TIMEOUT, AsyncPgConnection::establish(&admin)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no PostgreSQL answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// `postgres://u@h:p/name?x` → (`postgres://u@h:p`, `name`).
pub fn split_database(url: &str) -> anyhow::Result<(&str, &str)> {
    let (root, rest) = url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    Ok((root, rest.split('?').next().unwrap_or(rest)))
}

/// The `postgres` database next to `url`'s, with the same options (`?sslmode=…`).
pub fn admin_url(url: &str) -> anyhow::Result<String> {
    let options = url.split_once('?').map_or("", |(_, o)| o);
    let root = split_database(url)?.0;
    Ok(if options.is_empty() {
        format!("{root}/postgres")
    } else {
        format!("{root}/postgres?{options}")
    })
}

/// The port in `scheme://[user@]host:port/…`, if any.
fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    host.rsplit_once(':')?.1.parse().ok()
}

/// Finds or starts what the stack needs. Checks everything before starting anything, so a
/// machine without the packages gets one line per missing piece and nothing half-started.
pub async fn prepare(
    amqp_url: &str,
    database_url: &str,
    data_dir: &Path,
    fresh: bool,
) -> anyhow::Result<Infra> {
    println!(
        "checking for RabbitMQ at {} and PostgreSQL at {}…",
        without_password(amqp_url),
        without_password(database_url)
    );
    let (amqp, pg) = tokio::join!(amqp_answers(amqp_url), postgres_answers(database_url));
    let need_rabbit = amqp.err();
    let need_postgres = pg.err();
    let mut missing = Vec::new();
    if let Some(why) = &need_rabbit
        && services::find_rabbitmq().is_none()
    {
        missing.push(format!(
            "RabbitMQ: nothing answers at {} ({why}) and rabbitmq-server is not installed: {RABBITMQ_INSTALL}",
            without_password(amqp_url)
        ));
    }
    if let Some(why) = &need_postgres
        && services::find_postgres().is_none()
    {
        missing.push(format!(
            "PostgreSQL: nothing answers at {} ({why}) and initdb/pg_ctl are not installed: {POSTGRES_INSTALL}",
            without_password(database_url)
        ));
    }
    if !missing.is_empty() {
        for line in &missing {
            eprintln!("{line}");
        }
        eprintln!(
            "Or run the whole stack in containers instead: docker compose --profile dev up --build"
        );
        bail!("cannot start the stack: {} missing", missing.len());
    }

    let mut infra = Infra {
        amqp_url: amqp_url.to_owned(),
        database_url: database_url.to_owned(),
        rabbit: None,
        postgres: None,
    };
    if let Some(why) = need_rabbit {
        println!(
            "RabbitMQ: nothing answers at {} ({why}); starting a private node from the installed rabbitmq-server…",
            without_password(amqp_url)
        );
        let launch = launch(data_dir, "rabbitmq", port_of(amqp_url), fresh)?;
        let rabbit = tokio::task::spawn_blocking(move || PrivateRabbit::launch(&launch))
            .await?
            .context("cannot start the private RabbitMQ")?;
        println!(
            "RabbitMQ: private node {} at 127.0.0.1:{} (data in {})",
            rabbit.node,
            rabbit.port,
            rabbit.dir().display()
        );
        infra.amqp_url = rabbit.url();
        infra.rabbit = Some(rabbit);
    }
    if let Some(why) = need_postgres {
        println!(
            "PostgreSQL: nothing answers at {} ({why}); starting a private cluster from the installed initdb/pg_ctl…",
            without_password(database_url)
        );
        let launch = match launch(data_dir, "postgres", port_of(database_url), fresh) {
            Ok(l) => l,
            Err(e) => {
                infra.stop().await;
                return Err(e);
            }
        };
        let started = tokio::task::spawn_blocking(move || PrivatePostgres::launch(&launch, None))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.context("cannot start the private PostgreSQL"));
        let pg = match started {
            Ok(pg) => pg,
            Err(e) => {
                infra.stop().await;
                return Err(e);
            }
        };
        println!(
            "PostgreSQL: private cluster at 127.0.0.1:{} (data in {})",
            pg.port,
            pg.dir().display()
        );
        let name = split_database(database_url)?.1;
        infra.database_url = format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port);
        infra.postgres = Some(pg);
    }
    Ok(infra)
}

/// Where and how to run one private server; `fresh` empties its folder first.
fn launch(data_dir: &Path, name: &str, port: Option<u16>, fresh: bool) -> anyhow::Result<Launch> {
    if fresh {
        let dir = services::service_dir(data_dir, name)?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
        println!("{name}: --fresh, emptied {}", dir.display());
    }
    Ok(Launch {
        dir: data_dir.to_path_buf(),
        port: port.unwrap_or(0),
        keep: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_a_url_with_or_without_a_user() {
        assert_eq!(port_of("amqp://guest:guest@127.0.0.1:5672/%2f"), Some(5672));
        assert_eq!(port_of("postgres://127.0.0.1:5433/x"), Some(5433));
        assert_eq!(port_of("postgres://localhost/x"), None);
    }

    #[test]
    fn splits_the_database_name_off_its_url() {
        let (root, name) =
            split_database("postgres://postgres@127.0.0.1:5432/stripe_credits?sslmode=disable")
                .unwrap();
        assert_eq!(root, "postgres://postgres@127.0.0.1:5432");
        assert_eq!(name, "stripe_credits");
        assert_eq!(
            admin_url("postgres://p@h:1/x?sslmode=disable").unwrap(),
            "postgres://p@h:1/postgres?sslmode=disable"
        );
    }
}
