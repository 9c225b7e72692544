//! fulfill's decisions, as plain functions over plain data: no async, no IO.
//!
//! - [`account`]: whose credits (the platform's users, or a Connect account's);
//! - [`credits`]: the credits rule (who, how many, when) of a refetched session;
//! - [`expiry_rule`]: which purchased credits expire when (`credits_valid_days`);
//! - [`target`]: what a session's ledger should hold given its money side now, and the
//!   delta entries that get it there;
//! - [`session`]: the session's states, their transitions, and the plan one view makes;
//! - [`cue`]: what set a convergence off, and whether a view answers it;
//! - [`settlement`]: ack, retry or dead-letter a delivery;
//! - [`ack_window`]: which acks of a channel go out together (`multiple`).
//!
//! The orchestrator (`crate::fulfillment`) is fetch → decide here → persist → settle.

pub mod account;
pub mod ack_window;
pub mod credits;
pub mod cue;
pub mod expiry_rule;
pub mod session;
pub mod settlement;
pub mod target;

#[cfg(test)]
mod convergence;
