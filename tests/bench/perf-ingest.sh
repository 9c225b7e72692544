#!/usr/bin/env bash
# Where ingest's CPU goes under load, by perf (cpu-clock sampling: this machine's perf has
# no hardware counters): runs `bench ingest --runs 1 --seconds 10` and samples the ingest
# process, every thread, through its c=64 phase; then prints the split by object (ingest,
# kernel, libc, ...) and the top symbols. Kernel and syscall time are what callgrind
# (bench ingest-cpu) cannot see. Needs the release build (tests/bench/run.sh builds it).
#
#   tests/bench/perf-ingest.sh [perf.data]
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-target/perf-ingest.data}
log=target/perf-ingest-bench.txt
command -v perf >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
}
. tests/bench/at-c64.sh
perf record -q -e cpu-clock -F 999 -p "$pid" -o "$data" -- sleep 8
wait "$bench"
grep -E "^run 0: c=64 .*req/s|peak RSS" "$log"
echo "## by object"
perf report -i "$data" --sort dso --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -12
echo "## top symbols"
perf report -i "$data" --sort dso,sym --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -40
