//! Arbitrary JSON as a refetched Checkout Session: the credits rule never panics and never
//! credits a session that is not complete and paid.
#![no_main]

use fulfill::{
    domain::credits::{Decision, decide},
    stripe::checkout_session::{CheckoutSession, PaymentStatus, SessionStatus},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(session) = serde_json::from_slice::<CheckoutSession>(data) else { return };
    if let Decision::Credit { credits, .. } = decide(&session) {
        assert!(credits > 0);
        assert_eq!(session.status, Some(SessionStatus::Complete));
        assert!(matches!(session.payment_status, PaymentStatus::Paid | PaymentStatus::NoPaymentRequired));
    }
});
