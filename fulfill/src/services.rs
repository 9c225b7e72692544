//! fulfill's parts, wired once: the database pool, the metrics, the Stripe client with the
//! shared rate budget, and the fulfiller. `serve`, the CLI commands and the tests all
//! build them here.

use std::sync::Arc;

use crate::{
    config::Config,
    db::{self, Pool},
    fulfillment::Fulfiller,
    metrics::Metrics,
    stripe::{KeyHealth, RateLimiter, StripeClient},
};

#[derive(Clone)]
pub struct Services {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// For what is not one session's fulfillment (reconciliation's lists).
    pub stripe: StripeClient,
    pub fulfiller: Arc<Fulfiller>,
    /// Whether Stripe accepts the key (the consumer and readiness watch it).
    pub key: Arc<KeyHealth>,
}

impl Services {
    /// Connects nothing yet (the pool is lazy): safe while PostgreSQL restarts.
    pub fn build(config: &Config) -> Result<Self, reqwest::Error> {
        let metrics = Arc::new(Metrics::new());
        let pool = db::pool(&config.database_url, config.database_pool_size);
        let limiter = RateLimiter::shared(pool.clone(), config.stripe.rate_limit);
        let key = Arc::new(KeyHealth::default());
        let stripe = StripeClient::new(
            config.stripe.clone(),
            limiter,
            Arc::clone(&metrics),
            Arc::clone(&key),
        )?;
        let fulfiller = Arc::new(Fulfiller::new(
            pool.clone(),
            stripe.clone(),
            Arc::clone(&metrics),
            config.refund_policy,
        ));
        Ok(Self {
            pool,
            metrics,
            stripe,
            fulfiller,
            key,
        })
    }
}
