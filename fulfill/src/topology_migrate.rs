//! `fulfill topology migrate|check`: the CLI glue around [`shared::topology::migrate`].

use anyhow::Context;
use shared::{
    amqp,
    config::{AmqpConfig, ProcessEnv},
    telemetry,
    topology::{TOPOLOGY_VERSION, Topology, migrate},
};

pub enum Action {
    Migrate,
    Check,
}

pub async fn run(action: Action) -> anyhow::Result<()> {
    let telemetry_config = telemetry::TelemetryConfig::from_env(&ProcessEnv)?;
    let _telemetry = telemetry::init("fulfill", &telemetry_config);
    let config = AmqpConfig::from_env(&ProcessEnv)?;
    let connection = amqp::connect(&config, "fulfill-topology")
        .await
        .context("cannot connect to RabbitMQ")?;
    let topology = Topology::new(config.topology_prefix.clone());
    let outcome = match action {
        Action::Migrate => migrate::migrate(&connection, &topology)
            .await
            .map(|report| println!("{report}"))
            .context("the topology migration stopped; run it again to resume"),
        Action::Check => match migrate::stale_queues(&connection, &topology).await {
            Ok(stale) if stale.is_empty() => {
                println!("topology v{TOPOLOGY_VERSION}: current");
                Ok(())
            }
            Ok(stale) => Err(anyhow::anyhow!(
                "queues with older arguments: {}; run `fulfill topology migrate`",
                stale.join(", ")
            )),
            Err(e) => Err(e).context("cannot probe the queues"),
        },
    };
    let _ = connection.close(200, "done".into()).await;
    outcome
}
