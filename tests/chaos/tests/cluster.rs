//! A three-node RabbitMQ cluster of private nodes (started from the installed packages on
//! their own ports): the owed queues are replicated on all three; messages confirmed
//! before the checkout queue's leader is SIGKILLed, and before another node restarts, are
//! all consumed afterwards through a node list, none lost, none doubled.
//! Run on its own: `cargo test -p chaos --test cluster -- --nocapture`.
//!
//! This covers the broker half of issue #15's cluster test; load through ingest and two
//! fulfill processes on the cluster is not in it yet. Not in `.ci/run` yet, and ignored:
//! on RabbitMQ 3.10 here, publishes after the leader's SIGKILL were not confirmed within
//! the run (the first run: all 300 of that phase nacked; the second: no confirm at all),
//! which needs investigating (election timing, the killed node's Erlang distribution)
//! before it can gate CI. Run it by hand: `cargo test -p chaos --test cluster -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{collections::BTreeMap, time::Duration};

use chaos::PrivateRabbit;
use e2e::log_dir;
use lapin::{
    BasicProperties, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use shared::{amqp::failover::connect_any, topology::Topology};

const PREFIX: &str = "cluster.";
const PER_PHASE: usize = 300;

/// Publishes `n` messages, each until the broker confirms it, as ingest and Stripe do
/// together (a nack or a lost connection is ingest's 503, and Stripe sends again).
/// Returns (confirmed, refused attempts).
async fn publish(urls: &str, topology: &Topology, from: usize, n: usize) -> (usize, usize) {
    let mut refused = 0;
    let mut confirmed = 0;
    let mut i = from;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while i < from + n && tokio::time::Instant::now() < deadline {
        let Ok((conn, node)) = connect_any(urls, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        while i < from + n && tokio::time::Instant::now() < deadline {
            // A confirm that never comes is a refusal too, not a hang.
            let sent = tokio::time::timeout(Duration::from_secs(10), async {
                ch.basic_publish(
                    topology.events_exchange().as_str().into(),
                    "checkout.session.completed".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    b"{}",
                    BasicProperties::default()
                        .with_message_id(format!("evt_cluster{i:05}").into())
                        .with_delivery_mode(2),
                )
                .await?
                .await
            })
            .await;
            match sent {
                Ok(Ok(lapin::Confirmation::Ack(None))) => {
                    confirmed += 1;
                    i += 1;
                }
                Ok(Ok(_)) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
        println!("published up to {i} through {node}");
        let _ = conn.close(200, "done".into()).await;
    }
    (confirmed, refused)
}

/// Takes every message until `expected` distinct ids are in, through whichever node is up.
async fn consume_all(urls: &str, topology: &Topology, expected: usize) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < expected && tokio::time::Instant::now() < deadline {
        let Ok((conn, _)) = connect_any(urls, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        loop {
            match ch
                .basic_get(
                    topology.checkout_queue().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
            {
                Ok(Some(m)) => {
                    let id = m
                        .delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .unwrap()
                        .to_string();
                    if m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .is_ok()
                    {
                        *seen.entry(id).or_insert(0) += 1;
                    }
                }
                // Empty for now (the new leader may still be taking over): look again.
                Ok(None) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = conn.close(200, "done".into()).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "publishes after the leader's SIGKILL are not confirmed yet on 3.10; see the module doc"]
async fn a_three_node_cluster_loses_nothing_when_the_leader_is_killed_and_a_node_restarts() {
    let work = log_dir("cluster");
    let nodes: Vec<PrivateRabbit> = (0..3)
        .map(|i| PrivateRabbit::start(&work.join(format!("n{i}"))))
        .collect();
    nodes[1].join(&nodes[0]);
    nodes[2].join(&nodes[0]);
    let urls = nodes
        .iter()
        .map(PrivateRabbit::url)
        .collect::<Vec<_>>()
        .join(",");
    let topology = Topology::new(PREFIX);
    {
        let (conn, _) = connect_any(&urls, ConnectionProperties::default())
            .await
            .unwrap();
        topology
            .declare(&conn.create_channel().await.unwrap())
            .await
            .unwrap();
        let _ = conn.close(200, "done".into()).await;
    }
    let members = nodes[0].queue_members();
    for queue in [
        topology.checkout_queue(),
        topology.retry_queue(),
        topology.dead_letter_queue(),
    ] {
        let (_, _, m) = members
            .iter()
            .find(|(name, _, _)| *name == queue)
            .unwrap_or_else(|| panic!("{queue} not listed: {members:?}"));
        assert_eq!(m.len(), 3, "{queue} replicated on {m:?}");
    }
    let leader = members
        .iter()
        .find(|(name, _, _)| *name == topology.checkout_queue())
        .map(|(_, leader, _)| leader.clone())
        .unwrap();

    let mut refused = 0;
    let mut phase = async |from| {
        let (c, r) = publish(&urls, &topology, from, PER_PHASE).await;
        refused += r;
        c
    };
    let mut confirmed = phase(0).await;
    let killed = nodes.iter().position(|n| n.node == leader).unwrap();
    println!("SIGKILL the checkout queue's leader {leader}");
    nodes[killed].kill();
    confirmed += phase(PER_PHASE).await;
    nodes[killed].start_again();
    let other = (killed + 1) % 3;
    println!("restarting another node, {}", nodes[other].node);
    nodes[other].restart(Duration::from_secs(1));
    confirmed += phase(2 * PER_PHASE).await;

    let seen = consume_all(&urls, &topology, confirmed).await;
    let doubled = seen.values().filter(|n| **n > 1).count();
    let lost = confirmed.saturating_sub(seen.len());
    println!(
        "cluster figures: confirmed {confirmed}, refused attempts (ingest's 503s) {refused}, consumed {} distinct, lost {lost}, doubled {doubled}",
        seen.len()
    );
    assert_eq!(confirmed, 3 * PER_PHASE, "every publish confirmed");
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
}
