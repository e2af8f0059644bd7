#!/usr/bin/env bash
# The reconnect curve of a relay hand-over (docs/operations.md, "Restarting").
#
# Starts relay A, connects --clients subscribed swarm clients to it, then the
# swarm starts relay B on the same port (SO_REUSEPORT) and sends A a SIGTERM
# (`tidings-swarm storm --drop server --successor ...`). A closes every
# WebSocket with 1001 and `{"retry_after_ms":N}`, N drawn from
# `[shutdown] reconnect_spread`; each client waits its N (or, with
# --ignore-retry-after, only its own backoff) and comes back to B. The swarm
# prints the curve's figures and its RESULT json line, and writes the curve
# (upgrades per 100 ms after the SIGTERM) as an SVG with --plot.
#
#   loadtest/restart_storm.sh --clients 5000 --spread 10s --plot restart-spread.svg
#   loadtest/restart_storm.sh --clients 5000 --spread 0 --plot restart-no-spread.svg
#
# Loopback only. Build first: cargo build --release -p tidings -p tidings-loadtest

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY=$TARGET_DIR/release/tidings
SWARM=$TARGET_DIR/release/tidings-swarm

CLIENTS=5000
SPREAD=10s
PORT=18771
REACTORS=1
ACCEPT_RATE=0
DEADLINE=60s
PLOT=
SWARM_FLAGS=()

usage() {
    cat <<'EOF'
Usage: loadtest/restart_storm.sh [flags]

  --clients N            subscribed clients on the old relay, default 5000
  --spread D             [shutdown] reconnect_spread of both relays, default 10s
  --port N               the shared port on 127.0.0.1, default 18771
  --reactors N           reactors of each relay, default 1
  --accept-rate N        [limits] accept_rate of both relays, default 0 (off)
  --deadline D           clients not back by then are left out, default 60s
  --plot FILE.svg        write the reconnect curve here
  --ignore-retry-after   clients reconnect after their backoff only
  --seed N               the backoff jitter's seed
EOF
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --clients) CLIENTS=$2; shift 2 ;;
        --spread) SPREAD=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --reactors) REACTORS=$2; shift 2 ;;
        --accept-rate) ACCEPT_RATE=$2; shift 2 ;;
        --deadline) DEADLINE=$2; shift 2 ;;
        --plot) PLOT=$2; shift 2 ;;
        --ignore-retry-after) SWARM_FLAGS+=(--ignore-retry-after); shift ;;
        --seed) SWARM_FLAGS+=(--seed "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown flag: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for bin in "$RELAY" "$SWARM"; do
    [[ -x $bin ]] || { echo "$bin is missing: cargo build --release -p tidings -p tidings-loadtest" >&2; exit 1; }
done
if [[ -n $PLOT ]]; then SWARM_FLAGS+=(--plot "$PLOT"); fi

WORK=$(mktemp -d)
OLD=
cleanup() {
    [[ -n $OLD ]] && kill "$OLD" 2>/dev/null && wait "$OLD" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Both relays: the spread under test, and a listen queue deep enough that
# the crowd waits in the kernel rather than in SYN retries.
cat >"$WORK/relay.toml" <<EOF
[shutdown]
reconnect_spread = "$SPREAD"
[limits]
listen_backlog = 65535
accept_rate = $ACCEPT_RATE
EOF

RELAY_CMD="$RELAY --listen 127.0.0.1:$PORT --config $WORK/relay.toml --reactors $REACTORS"
# Close logs are rate-limited, but thousands of them are still noise here.
export TIDINGS_LOG=${TIDINGS_LOG:-warn}
$RELAY_CMD >"$WORK/old.out" &
OLD=$!
for _ in $(seq 100); do
    grep -q "^tidings listening on" "$WORK/old.out" 2>/dev/null && break
    sleep 0.1
done
grep -q "^tidings listening on" "$WORK/old.out" || { echo "relay A did not start" >&2; exit 1; }

"$SWARM" storm --url "ws://127.0.0.1:$PORT/ws" --connections "$CLIENTS" \
    --drop server --server-pid "$OLD" --successor "$RELAY_CMD" \
    --deadline "$DEADLINE" "${SWARM_FLAGS[@]}"
