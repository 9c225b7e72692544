//! `devstack attention`: the sessions an operator should look at (`GET /attention`),
//! one line each: the session, its state, its user and why.

use anyhow::bail;

use crate::{
    stack::Settings,
    trigger::{Trigger, http_client},
};

pub async fn list(settings: &Settings, limit: u32) -> anyhow::Result<()> {
    let t = Trigger::new(http_client(), settings.clone());
    let (status, rows) = t
        .fulfill(
            reqwest::Method::GET,
            &format!("/attention?limit={limit}"),
            None,
        )
        .await?;
    if !status.is_success() {
        bail!("fulfill answered {status}: {rows}");
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("nothing needs attention");
        return Ok(());
    }
    println!("{} session(s) need attention:", rows.len());
    for row in rows {
        let why = row["attention"]
            .as_str()
            .or(row["reason"].as_str())
            .unwrap_or("?");
        println!(
            "  {}  {}  user {}  {why}",
            row["session_id"].as_str().unwrap_or("?"),
            row["state"].as_str().unwrap_or("?"),
            row["user_id"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
