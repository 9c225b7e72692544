#!/usr/bin/env bash
# The one documented benchmark command: installs the load generator (wrk, Debian's package)
# if missing, builds in release mode, and runs both benchmarks. Needs RabbitMQ and
# PostgreSQL as for the tests. Arguments go to the bench binary (e.g. `ingest`, `fulfill`).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
cargo build --release -q --bin ingest --bin fulfill --bin bench --bin passthrough
exec target/release/bench "${@:-all}"
