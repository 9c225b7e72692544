//! `devstack trigger debit|hold|capture|release|grant`: a website spending credits through
//! fulfill's API (deploy/API.md, "Spending credits"), each with the balance before and after.

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::trigger::{Balance, Trigger, user_path};

#[derive(clap::Args)]
pub struct Debit {
    #[arg(long)]
    user: String,
    /// Credits to spend.
    #[arg(long)]
    amount: i64,
    #[arg(long, default_value = "devstack debit")]
    reason: String,
}

#[derive(clap::Args)]
pub struct Hold {
    #[arg(long)]
    user: String,
    /// Credits to reserve.
    #[arg(long)]
    amount: i64,
    /// How long the hold lasts unless captured or released (1-604800 s).
    #[arg(long, default_value_t = 900)]
    ttl_secs: u32,
    #[arg(long, default_value = "devstack hold")]
    reason: String,
}

#[derive(clap::Args)]
pub struct Capture {
    /// The hold (`hold_…`), or `last`.
    hold: String,
    /// Credits to take (by default the whole hold); the rest is released.
    #[arg(long)]
    amount: Option<i64>,
}

#[derive(clap::Args)]
pub struct Release {
    /// The hold (`hold_…`), or `last`.
    hold: String,
}

#[derive(clap::Args)]
pub struct Grant {
    #[arg(long)]
    user: String,
    /// Credits to give.
    #[arg(long)]
    amount: i64,
    /// Why (kept in the ledger).
    #[arg(long, default_value = "goodwill")]
    reason: String,
    /// When the granted credits expire: `90s`, `30m`, `12h`, `7d` from now; never without.
    #[arg(long, value_parser = parse_duration)]
    expires_in: Option<chrono::Duration>,
}

/// `90s`, `30m`, `12h`, `7d` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<chrono::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and s, m, h or d, like 30m"))?;
    match unit {
        "" | "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!("{text:?}: the unit is s, m, h or d")),
    }
}

/// The answer's balances, or its error (`insufficient_credits`…) as a failure.
fn accepted(status: StatusCode, body: &Value, what: &str) -> anyhow::Result<Balance> {
    if !status.is_success() {
        bail!(
            "fulfill refused the {what} ({status}): {}",
            body["error"].as_str().unwrap_or(&body.to_string())
        );
    }
    Ok(Balance::of(body))
}

pub async fn debit(t: &Trigger, d: Debit) -> anyhow::Result<()> {
    t.print_balance(&d.user, " before").await?;
    let (status, body) = t
        .fulfill(
            Method::POST,
            &format!("/users/{}/debits", user_path(&d.user)),
            Some(json!({"amount": d.amount, "reason": d.reason})),
        )
        .await?;
    let after = accepted(status, &body, "debit")?;
    println!(
        "debit {}: {} credits ({})",
        body["debit_id"].as_str().unwrap_or("?"),
        d.amount,
        d.reason
    );
    println!("balance of {} after: {after}", d.user);
    Ok(())
}

pub async fn hold(t: &Trigger, h: Hold) -> anyhow::Result<()> {
    t.print_balance(&h.user, " before").await?;
    let (status, body) = t
        .fulfill(
            Method::POST,
            &format!("/users/{}/holds", user_path(&h.user)),
            Some(json!({"amount": h.amount, "ttl_secs": h.ttl_secs, "reason": h.reason})),
        )
        .await?;
    let after = accepted(status, &body, "hold")?;
    let id = body["hold_id"].as_str().context("no hold id")?;
    t.remember("hold", id);
    println!(
        "hold {id}: {} credits until {}",
        h.amount,
        body["expires_at"].as_str().unwrap_or("?")
    );
    println!("balance of {} after: {after}", h.user);
    Ok(())
}

/// The hold's user, and the balance before settling it.
async fn before_settling(t: &Trigger, hold: &str) -> anyhow::Result<String> {
    let (status, body) = t
        .fulfill(Method::GET, &format!("/holds/{hold}"), None)
        .await?;
    if !status.is_success() {
        bail!("fulfill has no hold {hold} ({status})");
    }
    let user = body["user_id"]
        .as_str()
        .context("the hold has no user")?
        .to_owned();
    t.print_balance(&user, " before").await?;
    Ok(user)
}

pub async fn capture(t: &Trigger, c: Capture) -> anyhow::Result<()> {
    let hold = t.recall("hold", &c.hold)?;
    let user = before_settling(t, &hold).await?;
    let request = c.amount.map(|amount| json!({ "amount": amount }));
    let (status, body) = t
        .fulfill(Method::POST, &format!("/holds/{hold}/capture"), request)
        .await?;
    let after = accepted(status, &body, "capture")?;
    println!(
        "hold {hold}: captured {} credits, the rest released",
        body["captured"]
    );
    println!("balance of {user} after: {after}");
    Ok(())
}

pub async fn release(t: &Trigger, r: Release) -> anyhow::Result<()> {
    let hold = t.recall("hold", &r.hold)?;
    let user = before_settling(t, &hold).await?;
    let (status, body) = t
        .fulfill(Method::POST, &format!("/holds/{hold}/release"), None)
        .await?;
    accepted(status, &body, "release")?;
    println!(
        "hold {hold}: {}",
        body["status"].as_str().unwrap_or("released")
    );
    t.print_balance(&user, " after").await.map(drop)
}

pub async fn grant(t: &Trigger, g: Grant) -> anyhow::Result<()> {
    t.print_balance(&g.user, " before").await?;
    let expires_at = g
        .expires_in
        .map(|d| (chrono::Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let (status, body) = t
        .fulfill(
            Method::POST,
            &format!("/users/{}/grants", user_path(&g.user)),
            Some(json!({"amount": g.amount, "reason": g.reason, "expires_at": expires_at})),
        )
        .await?;
    let after = accepted(status, &body, "grant")?;
    println!(
        "grant {}: {} credits ({}), {}",
        body["grant_id"].as_str().unwrap_or("?"),
        g.amount,
        g.reason,
        body["expires_at"]
            .as_str()
            .map_or("never expiring".to_owned(), |at| format!(
                "expiring at {at}"
            ))
    );
    println!("balance of {} after: {after}", g.user);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations_in_seconds_minutes_hours_and_days() {
        assert_eq!(parse_duration("90"), Ok(chrono::Duration::seconds(90)));
        assert_eq!(parse_duration("30m"), Ok(chrono::Duration::minutes(30)));
        assert_eq!(parse_duration("12h"), Ok(chrono::Duration::hours(12)));
        assert_eq!(parse_duration("7d"), Ok(chrono::Duration::days(7)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
