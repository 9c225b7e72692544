#!/usr/bin/env bash
# ingest's system calls per request under load, by strace: runs `bench ingest --runs 1`,
# attaches `strace -c -f` (every thread) to ingest for the whole of its c=64 phase, and
# divides each call's count by the requests answered 2xx in that phase (the bench prints
# them). Wake-ups between threads show as futex (lapin's I/O thread parks on a channel)
# and write (a tokio runtime's eventfd); the HTTP and AMQP sockets' traffic as
# sendto/recvfrom. strace slows ingest, so its req/s here is no throughput figure; the
# calls per request are what counts. Needs the release build (tests/bench/run.sh).
#
#   tests/bench/syscalls-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
log=target/syscalls-ingest-bench.txt
out=target/syscalls-ingest.txt
command -v strace >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace
}
. tests/bench/at-c64.sh
strace -c -f -p "$pid" -o "$out" &
strace=$!
until grep -q "^run 0: c=64 " "$log"; do
  kill -0 "$bench" 2>/dev/null || break
  sleep 0.2
done
kill -INT "$strace" 2>/dev/null || true
wait "$strace" || true
wait "$bench"
line=$(grep -E "^run 0: c=64 " "$log" | head -1)
echo "$line"
answered=$(echo "$line" | sed -nE 's/.*\(2xx ([0-9]+),.*/\1/p')
[ "${answered:-0}" -gt 0 ] || { echo "no 2xx counted in the c=64 phase"; cat "$log"; exit 1; }
# strace -c: % time, seconds, usecs/call, calls, [errors], syscall
awk -v n="$answered" '
  $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
    printf "%-14s %9d calls  %5.2f per request\n", $NF, $4, $4 / n; total += $4 }
  END { printf "%-14s %9d calls  %5.2f per request\n", "(all)", total, total / n }' "$out" |
  sort -k2 -n -r | head -12
