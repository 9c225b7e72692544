//! TLS to PostgreSQL as libpq reads `sslmode`/`sslrootcert`, against a private cluster with
//! `ssl=on` and a CA made here: the pool and the migrations alike, and a wrong CA refused
//! at start with an error that says so (at once, not after the start-up patience).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use chaos::{PrivatePostgres, ServerTls};
use diesel::{QueryableByName, sql_types::Bool};
use diesel_async::RunQueryDsl;
use e2e::{binaries, log_dir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use secrecy::SecretString;

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn make_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A server certificate for the name `localhost` only, so that connecting to 127.0.0.1
/// tells verify-ca (chain only) from verify-full (chain and name).
fn server_cert(ca: &Ca) -> ServerTls {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    ServerTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Migrates through `url`, then asks the server, over a pooled connection, whether that
/// connection is encrypted.
async fn migrate_and_ask(url: &str) -> Result<bool, String> {
    let url = SecretString::from(url.to_owned());
    fulfill::db::run_migrations(&url)
        .await
        .map_err(|e| shared::telemetry::error_chain(&e))?;
    let pool = fulfill::db::pool(&url, 2);
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_and_sslrootcert_work_as_in_libpq_for_the_pool_and_the_migrations() {
    let dir = log_dir("pg-tls");
    let ca = make_ca("stripe-credits test CA");
    let wrong = make_ca("somebody else's CA");
    let pg = PrivatePostgres::start_with_tls(&dir, &server_cert(&ca));
    let (ca_file, wrong_file) = (dir.join("ca.pem"), dir.join("wrong-ca.pem"));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    std::fs::write(&wrong_file, &wrong.pem).unwrap();
    let at = |host: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/postgres?{query}", pg.port)
    };
    let ca_arg = format!("sslrootcert={}", ca_file.display());
    let wrong_arg = format!("sslrootcert={}", wrong_file.display());

    assert_eq!(
        migrate_and_ask(&at("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        migrate_and_ask(&at("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    // require: encrypted, any certificate (no CA given), as libpq.
    assert_eq!(
        migrate_and_ask(&at("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        migrate_and_ask(&at("localhost", &format!("sslmode=verify-full&{ca_arg}"))).await,
        Ok(true)
    );
    // The certificate names localhost, not 127.0.0.1: the chain is good, the name is not.
    assert_eq!(
        migrate_and_ask(&at("127.0.0.1", &format!("sslmode=verify-ca&{ca_arg}"))).await,
        Ok(true)
    );
    let misnamed = migrate_and_ask(&at("127.0.0.1", &format!("sslmode=verify-full&{ca_arg}")))
        .await
        .unwrap_err();
    assert!(misnamed.contains("not valid for name"), "{misnamed}");
    // require with a CA checks the chain (libpq: as verify-ca).
    let wrong_require = migrate_and_ask(&at("localhost", &format!("sslmode=require&{wrong_arg}")))
        .await
        .unwrap_err();
    assert!(wrong_require.contains("UnknownIssuer"), "{wrong_require}");

    // The service itself, with the wrong CA: it stops at start, saying why, without waiting
    // out the patience it has for an unreachable database.
    let url = at("localhost", &format!("sslmode=verify-full&{wrong_arg}"));
    let fulfill = binaries().join("fulfill");
    let started = Instant::now();
    let out = Command::new(&fulfill)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &url)
        .env("STRIPE_SECRET_KEY", "sk_test_tls")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("FULFILL_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "fulfill with a wrong CA: {:?} after {:?}",
        out.status,
        started.elapsed()
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr.contains("sslmode=verify-full") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    let migrate = Command::new(&fulfill)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stderr).contains("invalid peer certificate"));
    let ok = Command::new(&fulfill)
        .arg("migrate")
        .env_clear()
        .env(
            "DATABASE_URL",
            at("localhost", &format!("sslmode=verify-full&{ca_arg}")),
        )
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    drop(pg);
}
