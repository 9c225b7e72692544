# Sourced by the profiling scripts: starts `bench ingest --runs 1 --seconds 10` in the
# background, writing to "$log", and returns when its c=64 phase begins, with the bench's
# pid in $bench and ingest's in $pid.
target/release/bench ingest --runs 1 --seconds 10 >"$log" 2>&1 &
bench=$!
pid=
for _ in $(seq 300); do
  pid=$(pgrep -P "$bench" -x ingest || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "ingest did not start"; cat "$log"; exit 1; }
# The c=16 line is printed when the c=64 phase starts.
until grep -q "c=16" "$log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
