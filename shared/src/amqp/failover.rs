//! `AMQP_URL` may name several nodes of a cluster, comma-separated
//! (`amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f,...`): a connection goes to
//! the first live one, starting from a random node so that a fleet spreads over the
//! cluster, and the reconnect loops of both services come back here when their node dies,
//! so they move to a live one. Quorum queues make any node as good as another: a
//! client on a follower is served through the queue's leader.
//! <https://www.rabbitmq.com/docs/clustering#clients>

use std::{sync::Arc, time::Duration};

use lapin::{Connection, ConnectionProperties, ErrorKind};

/// How long one node may take to accept us before the next is tried.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The node URLs of a (possibly) comma-separated `AMQP_URL`.
pub fn nodes(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// `host:port` of a node URL: what the logs say, never the credentials.
pub fn node_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') {
        host.to_owned()
    } else if url.starts_with("amqps://") {
        format!("{host}:5671")
    } else {
        format!("{host}:5672")
    }
}

/// The order to try `n` nodes in, starting at `start`.
pub fn order(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n.max(1))
}

/// Connects to the first node that accepts; returns the connection and its node's label.
/// Fails with the last node's error when none does.
pub async fn connect_any(
    urls: &str,
    properties: ConnectionProperties,
) -> Result<(Connection, String), lapin::Error> {
    let nodes = nodes(urls);
    let start = if nodes.len() > 1 {
        rand::random_range(0..nodes.len())
    } else {
        0
    };
    let mut last = None;
    for i in order(nodes.len(), start) {
        let url = nodes[i];
        let label = node_label(url);
        match tokio::time::timeout(
            NODE_CONNECT_TIMEOUT,
            Connection::connect(url, properties.clone()),
        )
        .await
        {
            Ok(Ok(connection)) => return Ok((connection, label)),
            Ok(Err(e)) => {
                if nodes.len() > 1 {
                    tracing::warn!(node = %label, error = %e, "RabbitMQ node refused; trying the next");
                }
                last = Some(e);
            }
            Err(_) => {
                tracing::warn!(node = %label, "RabbitMQ node did not answer in time; trying the next");
                last = Some(lapin::Error::from(ErrorKind::IOError(Arc::new(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{label} did not accept the connection in time"),
                    ),
                ))));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        lapin::Error::from(ErrorKind::IOError(Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "AMQP_URL names no node",
        ))))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_node_list_and_labels_nodes_without_credentials() {
        let urls =
            "amqp://u:secret@rabbit-0:5672/%2f, amqp://u:secret@rabbit-1/%2f,,amqps://u:p@r2/v";
        assert_eq!(nodes(urls).len(), 3);
        let labels: Vec<_> = nodes(urls).into_iter().map(node_label).collect();
        assert_eq!(labels, ["rabbit-0:5672", "rabbit-1:5672", "r2:5671"]);
        assert!(labels.iter().all(|l| !l.contains("secret")));
    }

    #[test]
    fn tries_every_node_once_from_any_start() {
        for start in 0..3 {
            let mut seen: Vec<_> = order(3, start).collect();
            assert_eq!(seen[0], start);
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2]);
        }
    }
}
