//! `AMQP_URL` naming several nodes: fulfill connects to a live one and, when its node goes
//! away, moves to another and keeps crediting. The "nodes" are two proxies in front of the
//! test broker that the test cuts in turn (the cluster test does it with real nodes).

use fake_stripe::{PriceSpec, SessionSpec};
use test_support::proxy::TcpProxy;

use crate::helpers::{Options, World, eventually};

const COMPLETED: &str = "checkout.session.completed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulfill_fails_over_between_the_nodes_amqp_url_lists() {
    let world = World::new().await;
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let (a, b) = (TcpProxy::start(broker).await, TcpProxy::start(broker).await);
    // A node that is down from the start, then the two proxies.
    let dead = test_support::proxy::TcpProxy::start(broker).await;
    dead.cut();
    let url = [dead.addr(), a.addr(), b.addr()]
        .iter()
        .map(|addr| format!("amqp://guest:guest@{addr}/%2f"))
        .collect::<Vec<_>>()
        .join(",");
    let app = world
        .start(&Options {
            amqp_url: Some(url),
            ..Options::default()
        })
        .await;
    let pack = world.price(PriceSpec::credits(5));
    let mut expected = 0;
    // Credit once per step, whichever node fulfill happens to be on.
    for (step, cut, restore) in [
        (0, None, None),
        (1, Some(&a), None),
        (2, Some(&b), Some(&a)),
    ] {
        if let Some(node) = restore {
            node.restore();
        }
        if let Some(node) = cut {
            node.cut();
        }
        let s = world.session(SessionSpec::paid("roaming", &pack, 1));
        world.deliver(&s, COMPLETED).await;
        expected += 5;
        eventually(|| async {
            (app.balance(&world.client, "roaming").await == expected).then_some(())
        })
        .await;
        println!("step {step}: credited {expected}");
    }
}
