//! The Stripe event types this system consumes, as one enum: the topology binds them,
//! fulfill dispatches on them, reconciliation asks the Events API for them.
//!
//! Every one of them is only a cue to refetch (see fulfill's `domain`): the type says
//! which Stripe object to start from, never what to write.

/// What kind of object an event's `data.object` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    CheckoutSession,
    Charge,
    Refund,
    Dispute,
}

macro_rules! event_types {
    ($($variant:ident = $name:literal => $kind:ident,)*) => {
        /// A consumed Stripe event type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            /// Every consumed type, in a fixed order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// Stripe's name for the type (also the AMQP routing key).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The consumed type of this name, if it is one.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// What `data.object` holds for this type.
            pub fn object_kind(self) -> ObjectKind {
                match self {
                    $(Self::$variant => ObjectKind::$kind,)*
                }
            }
        }
    };
}

event_types! {
    CheckoutSessionCompleted = "checkout.session.completed" => CheckoutSession,
    CheckoutSessionAsyncPaymentSucceeded = "checkout.session.async_payment_succeeded" => CheckoutSession,
    CheckoutSessionAsyncPaymentFailed = "checkout.session.async_payment_failed" => CheckoutSession,
    CheckoutSessionExpired = "checkout.session.expired" => CheckoutSession,
    ChargeRefunded = "charge.refunded" => Charge,
    ChargeRefundUpdated = "charge.refund.updated" => Refund,
    ChargeDisputeCreated = "charge.dispute.created" => Dispute,
    ChargeDisputeUpdated = "charge.dispute.updated" => Dispute,
    ChargeDisputeClosed = "charge.dispute.closed" => Dispute,
    ChargeDisputeFundsWithdrawn = "charge.dispute.funds_withdrawn" => Dispute,
    ChargeDisputeFundsReinstated = "charge.dispute.funds_reinstated" => Dispute,
}

impl EventType {
    /// The four checkout types the contract names.
    pub fn is_checkout(self) -> bool {
        self.object_kind() == ObjectKind::CheckoutSession
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(EventType::parse("plan.created"), None);
        assert_eq!(EventType::ALL.len(), 11);
    }

    #[test]
    fn the_contract_s_four_checkout_types_are_the_checkout_ones() {
        let checkout: Vec<&str> = EventType::ALL
            .iter()
            .filter(|t| t.is_checkout())
            .map(|t| t.as_str())
            .collect();
        assert_eq!(
            checkout,
            [
                "checkout.session.completed",
                "checkout.session.async_payment_succeeded",
                "checkout.session.async_payment_failed",
                "checkout.session.expired"
            ]
        );
    }
}
