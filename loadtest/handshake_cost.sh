#!/usr/bin/env bash
# What auth costs a handshake, end to end: handshakes per second, and the
# relay's CPU per handshake, with no auth, a static token, a JWT (HS256) and
# a JWT (RS256, 2048-bit key).
#
# For each repetition and each kind (interleaved, so the machine's drift
# touches every kind alike) it starts a fresh relay configured for that kind,
# and connects --conns swarm clients as fast as it accepts them
# (`tidings-swarm idle --connect-rate 1000000 --duration 0s`), each sending
# the token as the `Bearer` subprotocol and subscribing. The relay verifies
# the token on every handshake (one token shared by all clients: a verifier
# keeps no cache). Tokens are minted by PyJWT (tests/tools/mint_jwt.py).
#
#   loadtest/handshake_cost.sh                     5,000 connections, 3 repetitions
#   loadtest/handshake_cost.sh --conns 10000 --reps 5
#
# Loopback only. Needs python3 with PyJWT and cryptography, and taskset
# (relay on CPU 0, swarm on CPU 1). Build first:
# cargo build --release -p tidings -p tidings-loadtest

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY=$TARGET_DIR/release/tidings
SWARM=$TARGET_DIR/release/tidings-swarm
MINT=$ROOT/tests/tools/mint_jwt.py

CONNS=5000
REPS=3
KINDS=none,static,hs256,rs256
PORT=18772
INFLIGHT=1000
ACCEPT_RATE=0

usage() {
    cat <<'EOF'
Usage: loadtest/handshake_cost.sh [flags]

  --conns N          connections per run, default 5000
  --reps N           repetitions of each kind, default 3
  --kinds LIST       comma list of none,static,hs256,rs256 (default: all)
  --port N           first port (each run takes the next), default 18772
  --max-inflight N   handshakes under way at once, default 1000
  --accept-rate N    [limits] accept_rate of the relay, default 0 (off)
EOF
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --conns) CONNS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --kinds) KINDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --max-inflight) INFLIGHT=$2; shift 2 ;;
        --accept-rate) ACCEPT_RATE=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown flag: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for bin in "$RELAY" "$SWARM"; do
    [[ -x $bin ]] || { echo "$bin is missing: cargo build --release -p tidings -p tidings-loadtest" >&2; exit 1; }
done
python3 -c "import jwt, cryptography" 2>/dev/null \
    || { echo "needs python3 with PyJWT and cryptography (pip install pyjwt cryptography)" >&2; exit 1; }

WORK=$(mktemp -d)
RELAY_PID=
cleanup() {
    [[ -n $RELAY_PID ]] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# The credentials: one static token, one HS256 and one RS256 JWT, valid for
# an hour and allowed the swarm's channel.
SECRET=handshake-cost-shared-secret-of-32-bytes
CLAIMS='{"sub":"swarm","channels":["metrics.>"],"exp_in":3600}'
python3 "$MINT" keys "$WORK"
python3 "$MINT" sign HS256 "$SECRET" "$CLAIMS" >"$WORK/hs256.token"
python3 "$MINT" sign RS256 "$WORK/rsa_private.pem" "$CLAIMS" >"$WORK/rs256.token"
echo "static-swarm-token" >"$WORK/static.token"

config() {
    printf '[limits]\nlisten_backlog = 65535\naccept_rate = %s\n' "$ACCEPT_RATE"
    case $1 in
        none) ;;
        static) printf '[[auth.tokens]]\ntoken = "static-swarm-token"\n' ;;
        hs256) printf '[auth.jwt]\nhs256_secret = "%s"\n' "$SECRET" ;;
        rs256) printf '[auth.jwt]\npublic_keys = ["%s"]\n' "$WORK/rsa_public.pem" ;;
        *) echo "unknown kind $1" >&2; exit 2 ;;
    esac
}

export TIDINGS_LOG=${TIDINGS_LOG:-warn}
RESULTS=$WORK/results.tsv
run=0
for rep in $(seq "$REPS"); do
    for kind in ${KINDS//,/ }; do
        port=$((PORT + run))
        run=$((run + 1))
        config "$kind" >"$WORK/$kind.toml"
        taskset -c 0 "$RELAY" --listen "127.0.0.1:$port" --reactors 1 \
            --config "$WORK/$kind.toml" >"$WORK/relay.out" &
        RELAY_PID=$!
        for _ in $(seq 100); do
            grep -q "^tidings listening on" "$WORK/relay.out" 2>/dev/null && break
            sleep 0.1
        done
        token=()
        [[ $kind == none ]] || token=(--token-file "$WORK/$kind.token")
        result=$(taskset -c 1 "$SWARM" idle --url "ws://127.0.0.1:$port/ws" \
            --connections "$CONNS" --connect-rate 1000000 --max-inflight "$INFLIGHT" \
            --duration 0s --server-pid "$RELAY_PID" "${token[@]}" 2>/dev/null | grep '^RESULT ')
        kill "$RELAY_PID" && wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
        echo "${result#RESULT }" | python3 -c '
import json, sys
kind, rep = sys.argv[1], sys.argv[2]
c = json.load(sys.stdin)["connect"]
print(kind, rep, c["ready"], sum(c["failed"].values()), round(c["rate_per_s"]),
      round(c["server_cpu_us_per_connection"] or 0, 1), sep="\t")
' "$kind" "$rep" | tee -a "$RESULTS"
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
print("\nkind     runs  ready/failed   handshakes/s (median, min-max)   relay CPU µs/handshake (median, min-max)")
for kind in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == kind]
    rate = [int(r[4]) for r in rs]
    cpu = [float(r[5]) for r in rs]
    ready = sum(int(r[2]) for r in rs)
    failed = sum(int(r[3]) for r in rs)
    print(f"{kind:8} {len(rs):4}  {ready}/{failed:<10} {statistics.median(rate):8.0f} ({min(rate)}-{max(rate)})"
          f"               {statistics.median(cpu):6.1f} ({min(cpu)}-{max(cpu)})")
EOF
