#!/usr/bin/env bash
# A fleet of relays on one nats-server, measured (docs/fleet.md).
#
# Not part of CI. Loopback only (127.0.0.0/8). Needs nats-server, cargo,
# curl, taskset and python3.
#
#   loadtest/fleet.sh scale      100,000 subscribers over 6 relays (core NATS):
#                                delivered/expected, latency, CPU, and memory per
#                                connection (each relay's RSS, NATS's, the kernel's)
#   loadtest/fleet.sh hop        the cost of the NATS hop: one relay in fleet mode
#                                against the same relay standalone, alternating
#   loadtest/fleet.sh hop --jetstream   the same with a JetStream upstream
#   loadtest/fleet.sh --help     all flags
#
# Each run starts its own nats-server and relays, runs tidings-swarm against
# them, keeps the swarm's RESULT json line (with this script's figures beside
# it) in loadtest/results/fleet-DATE.jsonl, stops everything it started, and
# prints a table.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

usage() {
    cat <<'EOF'
Usage: loadtest/fleet.sh scale|hop [flags]

scale   --relays relays (one reactor each, sharing every core) on one nats-server;
        --connections subscribers spread over them round-robin (the swarm's
        repeated --url) by worker processes (one per file limit's worth);
        events published over HTTP to the first relay at --rate go through NATS
        to every relay. Samples each relay's and NATS's VmRSS, open files,
        /proc/net/sockstat and the kernel's Slab once a second.
hop     one relay pinned to --relay-cpu (NATS beside it on --nats-cpu), the swarm
        and its publisher on --swarm-cpu. For each shape of --shapes, runs the
        relay standalone (no [upstream]) and in fleet mode (publish over HTTP
        -> NATS -> the same relay -> its subscribers), --reps times, alternating
        which goes first. The relay's and NATS's CPU are measured over the
        same window by the swarm (--server-pid, once each).

Flags:
  --jetstream           fleet mode with `jetstream = true`, and nats-server with
                        -js and a store directory in a temporary directory
  --relays N            scale: relay processes, default 6
  --connections N       scale: subscribers, default 100000
  --rate R              scale: events/s, default 1
  --shapes LIST         hop: SUBSCRIBERSxRATE, comma list, default 1000x100,10000x10
  --reps N              hop: repetitions of each pair, default 3
  --duration SECS       measured window, default 10
  --warmup SECS         publishing before the window, default 2
  --payload BYTES       bytes of each event's data, default 150
  --per-source N        swarm connections per source address, default 5000
  --relay-cpu N         hop: CPU of the relay, default 0
  --nats-cpu N          hop: CPU of nats-server, default the relay's
  --swarm-cpu N         hop: CPU of the swarm, default 1
  --port-base N         first relay port (relay k takes N+k), default 19500;
                        nats-server takes N-10, its monitoring port N-9
  --nats-server BIN     default: nats-server on PATH, else /usr/sbin/nats-server
  --out FILE            results, default loadtest/results/fleet-DATE.jsonl
  --raise-backlog[=N]   set net.core.netdev_max_backlog to N (default 16384) and
                        net.core.somaxconn to at least 4096 for the run, and
                        restore both afterwards
  --no-build            skip cargo build (use the existing target/release binaries)
  -h, --help            this text
EOF
}

# ---------------------------------------------------------------- settings
SCENARIO=${1:-}
case $SCENARIO in
    scale|hop) shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fleet.sh: first argument must be scale or hop (see --help)" >&2; exit 2 ;;
esac
JETSTREAM=0 RELAYS=6 CONNECTIONS=100000 RATE=1 SHAPES=1000x100,10000x10 REPS=3
DURATION=10 WARMUP=2 PAYLOAD=150 PER_SOURCE=5000 RELAY_CPU=0 NATS_CPU= SWARM_CPU=1
PORT_BASE=19500 NATS_BIN= OUT= RAISE_BACKLOG= BUILD=1

need() { [[ $# -ge 2 && -n $2 ]] || { echo "fleet.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --jetstream) JETSTREAM=1 ;;
        --relays) need "$@"; RELAYS=$2; shift ;;
        --connections) need "$@"; CONNECTIONS=$2; shift ;;
        --rate) need "$@"; RATE=$2; shift ;;
        --shapes) need "$@"; SHAPES=$2; shift ;;
        --reps) need "$@"; REPS=$2; shift ;;
        --duration) need "$@"; DURATION=$2; shift ;;
        --warmup) need "$@"; WARMUP=$2; shift ;;
        --payload) need "$@"; PAYLOAD=$2; shift ;;
        --per-source) need "$@"; PER_SOURCE=$2; shift ;;
        --relay-cpu) need "$@"; RELAY_CPU=$2; shift ;;
        --nats-cpu) need "$@"; NATS_CPU=$2; shift ;;
        --swarm-cpu) need "$@"; SWARM_CPU=$2; shift ;;
        --port-base) need "$@"; PORT_BASE=$2; shift ;;
        --nats-server) need "$@"; NATS_BIN=$2; shift ;;
        --out) need "$@"; OUT=$2; shift ;;
        --raise-backlog) RAISE_BACKLOG=16384 ;;
        --raise-backlog=*) RAISE_BACKLOG=${1#*=} ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fleet.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
NATS_CPU=${NATS_CPU:-$RELAY_CPU}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in RELAYS CONNECTIONS REPS PAYLOAD PER_SOURCE RELAY_CPU NATS_CPU SWARM_CPU PORT_BASE; do
    is_uint "${!v}" || { echo "fleet.sh: $v=${!v} is not a whole number" >&2; exit 2; }
done
for v in RATE DURATION WARMUP; do
    is_num "${!v}" || { echo "fleet.sh: $v=${!v} is not a number" >&2; exit 2; }
done
((RELAYS >= 1 && RELAYS <= 50)) || { echo "fleet.sh: --relays must be 1 to 50" >&2; exit 2; }
((REPS >= 1 && REPS <= 20)) || { echo "fleet.sh: --reps must be 1 to 20" >&2; exit 2; }
((PORT_BASE >= 1024 && PORT_BASE + RELAYS < 65536)) || { echo "fleet.sh: --port-base out of range" >&2; exit 2; }
for s in ${SHAPES//,/ }; do
    [[ $s =~ ^[1-9][0-9]*x[0-9]+([.][0-9]+)?$ ]] || { echo "fleet.sh: shape $s is not SUBSCRIBERSxRATE" >&2; exit 2; }
done
if [[ -n $RAISE_BACKLOG ]] && ! is_uint "$RAISE_BACKLOG"; then
    echo "fleet.sh: --raise-backlog=$RAISE_BACKLOG is not a whole number" >&2; exit 2
fi

NATS_PORT=$((PORT_BASE - 10))
NATS_MONITOR=$((PORT_BASE - 9))
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
[[ -n $OUT ]] || OUT=$ROOT/loadtest/results/fleet-$STAMP.jsonl
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
WORK=$(mktemp -d -t tidings-fleet.XXXXXX)

log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- cleanup
STARTED=()      # pids this script started (relays, nats-server, sampler)
SWARM_PID=      # the running swarm's `timeout` wrapper
SYSCTL_ORIG=()  # "name value" pairs to restore

stop_pid() { # pid: TERM, up to 5 s, then KILL; only ever this one pid
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    STARTED=()
}

set_sysctl() { # name value
    local file=/proc/sys/${1//.//}
    if command -v sysctl >/dev/null && sysctl -q -w "$1=$2" >/dev/null 2>&1; then return 0; fi
    { echo "$2" >"$file"; } 2>/dev/null
}

cleanup() {
    local rc=$? pair
    trap - EXIT INT TERM
    [[ -z $SWARM_PID ]] || stop_pid "$SWARM_PID"
    stop_all
    for pair in "${SYSCTL_ORIG[@]}"; do
        # shellcheck disable=SC2086
        set_sysctl $pair || log "WARNING: could not restore $pair"
    done
    rm -rf "$WORK/jetstream"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- setup
if [[ -z $NATS_BIN ]]; then
    NATS_BIN=$(command -v nats-server || true)
    [[ -n $NATS_BIN ]] || NATS_BIN=/usr/sbin/nats-server
fi
[[ -x $NATS_BIN ]] || { echo "fleet.sh: no nats-server at '$NATS_BIN' (install it, or pass --nats-server)" >&2; exit 1; }
for tool in curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "fleet.sh: $tool not found" >&2; exit 1; }
done
NCPU=$(nproc)
for v in RELAY_CPU NATS_CPU SWARM_CPU; do
    ((${!v} < NCPU)) || { echo "fleet.sh: $v=${!v}, but this machine has $NCPU CPU(s)" >&2; exit 2; }
done

# Every process started from here inherits the raised limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $SCENARIO == scale ]]; then
    per_relay=$(((CONNECTIONS + RELAYS - 1) / RELAYS))
    if [[ $NOFILE != unlimited ]] && ((per_relay + 200 > NOFILE)); then
        echo "fleet.sh: $per_relay connections per relay do not fit the open-file limit ($NOFILE); use more --relays" >&2
        exit 2
    fi
fi
log "open-file limit $NOFILE per process; results: $OUT"

if [[ -n $RAISE_BACKLOG ]]; then
    for pair in "net.core.netdev_max_backlog $RAISE_BACKLOG" "net.core.somaxconn 4096"; do
        read -r name value <<<"$pair"
        orig=$(cat "/proc/sys/${name//.//}")
        ((orig >= value)) && continue
        if set_sysctl "$name" "$value"; then
            SYSCTL_ORIG+=("$name $orig")
            log "$name raised from $orig to $value for the run"
        else
            log "WARNING: could not raise $name (root needed); bursts may drop packets"
        fi
    done
fi

if ((BUILD)); then
    log "cargo build --release -p tidings -p tidings-loadtest"
    (cd "$ROOT" && cargo build --release -p tidings -p tidings-loadtest)
fi
TIDINGS=$TARGET_DIR/release/tidings
SWARM=$TARGET_DIR/release/tidings-swarm
[[ -x $TIDINGS && -x $SWARM ]] || { echo "fleet.sh: $TIDINGS or $SWARM missing (build failed?)" >&2; exit 1; }

softnet_dropped() { # the sum of /proc/net/softnet_stat's second column, all CPUs
    python3 -c 'import sys; print(sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat")))'
}

# ---------------------------------------------------------------- servers
# Starts nats-server on CPU $1 (or any CPU with "-"); sets NATS_PID.
start_nats() {
    local cpu=$1 args=(-a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR")
    if ((JETSTREAM)); then
        rm -rf "$WORK/jetstream"
        args+=(-js -sd "$WORK/jetstream")
    fi
    local pin=()
    [[ $cpu == - ]] || pin=(taskset -c "$cpu")
    "${pin[@]}" "$NATS_BIN" "${args[@]}" >"$WORK/nats.log" 2>&1 &
    NATS_PID=$!
    STARTED+=("$NATS_PID")
    local i
    for ((i = 0; i < 100; i++)); do # bounded: 10 s
        kill -0 "$NATS_PID" 2>/dev/null || { log "nats-server exited; log:"; tail -20 "$WORK/nats.log" >&2; return 1; }
        curl -fsS -m 1 "http://127.0.0.1:$NATS_MONITOR/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "nats-server did not answer /healthz within 10 s"
    return 1
}

# The relay's configuration: standalone, or fleet mode on our nats-server.
write_config() { # file fleet(0|1)
    {
        echo 'reactors = 1'
        if (($2)); then
            echo '[upstream]'
            echo "nats = [\"nats://127.0.0.1:$NATS_PORT\"]"
            if ((JETSTREAM)); then echo 'jetstream = true'; else echo 'jetstream = false'; fi
        fi
    } >"$1"
}

# Starts a relay on port $1 with config $2, pinned to CPU $3 (or "-");
# appends its pid to RELAY_PIDS. In fleet mode, waits until it is
# connected to NATS.
start_relay() {
    local port=$1 config=$2 cpu=$3 fleet=$4 pid i
    local pin=()
    [[ $cpu == - ]] || pin=(taskset -c "$cpu")
    TIDINGS_LOG=warn "${pin[@]}" "$TIDINGS" --listen "127.0.0.1:$port" --config "$config" \
        >"$WORK/relay-$port.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    RELAY_PIDS+=("$pid")
    for ((i = 0; i < 200; i++)); do # bounded: 20 s
        if ! kill -0 "$pid" 2>/dev/null; then
            log "relay on port $port exited at startup; its log:"
            tail -20 "$WORK/relay-$port.log" >&2
            return 1
        fi
        local health
        health=$(curl -sS -m 1 "http://127.0.0.1:$port/healthz" 2>/dev/null || true)
        if [[ -n $health ]] && { ((!fleet)) || [[ $health == *'"upstream":"up"'* ]]; }; then
            return 0
        fi
        sleep 0.1
    done
    log "relay on port $port not ready within 20 s (last /healthz: ${health:-none})"
    return 1
}

# One relay's counters of interest, as `name value` lines.
relay_counters() { # port
    curl -fsS -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        grep -E '^tidings_(upstream_(received|published|refused|slow_consumer|disconnects|duplicates)_total|slow_consumer_closes_total|deliveries_total) ' || true
}

# ---------------------------------------------------------------- sampling
# Once a second, bounded by $1 samples: VmRSS (KiB) and open files of each
# pid in $2.. , /proc/net/sockstat's TCP sockets in use and buffer pages,
# and /proc/meminfo's Slab.
sampler() {
    local max=$1 n pid line
    shift
    for ((n = 0; n < max; n++)); do
        line="$(date +%s.%N)"
        for pid in "$@"; do
            line+=" $pid:$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
            line+=":$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
        done
        line+=" tcp:$(awk '/^TCP:/ {print $3":"$11}' /proc/net/sockstat)"
        line+=" sockets:$(awk '/^sockets:/ {print $3}' /proc/net/sockstat)"
        line+=" slab:$(awk '/^Slab:/ {print $2}' /proc/meminfo)"
        echo "$line"
        sleep 1
    done
}

# ---------------------------------------------------------------- the swarm
# Runs the swarm in the background (so a signal reaches the trap at once)
# and waits for it. Arguments: name timeout_s taskset-cpu-or-"-" swarm args...
run_swarm() {
    local name=$1 limit=$2 cpu=$3 rc=0
    shift 3
    local pin=()
    [[ $cpu == - ]] || pin=(taskset -c "$cpu")
    printf '%q ' "$SWARM" "$@" >"$WORK/$name.cmd"
    timeout --kill-after=10 "$limit" "${pin[@]}" "$SWARM" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
    SWARM_PID=$!
    wait "$SWARM_PID" || rc=$?
    SWARM_PID=
    ((rc == 0)) || log "  swarm exit $rc: $(tail -3 "$WORK/$name.err" | tr '\n' ' ')"
    return 0
}

# Appends one json line: the swarm's RESULT plus what this script measured.
# Arguments: name kind(scale|hop) mode(standalone|fleet) softnet_drops extra.json
record() {
    python3 - "$WORK" "$@" "$OUT" "$STAMP" "$JETSTREAM" <<'PY'
import json, sys
work, name, kind, mode, drops, extra, out, stamp, js = sys.argv[1:10]
result = None
try:
    for line in open(f"{work}/{name}.out", errors="replace"):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
except OSError:
    pass
rec = {
    "fleet": {
        "stamp": stamp, "run": name, "scenario": kind, "mode": mode,
        "jetstream": js == "1", "softnet_dropped": int(drops),
        "swarm_cmd": open(f"{work}/{name}.cmd").read().strip(),
        "swarm_stderr_tail": open(f"{work}/{name}.err", errors="replace").read()[-2000:],
        **json.loads(open(extra).read()),
    },
    "result": result,
}
with open(out, "a") as f:
    f.write(json.dumps(rec, separators=(",", ":")) + "\n")
PY
}

# ---------------------------------------------------------------- scale
scale() {
    local connect_s=$(((CONNECTIONS + 999) / 1000))
    local limit=$((connect_s + ${WARMUP%.*} + ${DURATION%.*} + 120))
    local k urls=() pids_args=() drops0 drops1
    RELAY_PIDS=()
    drops0=$(softnet_dropped)
    start_nats - || return 1
    write_config "$WORK/fleet.toml" 1
    for ((k = 0; k < RELAYS; k++)); do
        start_relay $((PORT_BASE + k)) "$WORK/fleet.toml" - 1 || { stop_all; return 1; }
        urls+=(--url "ws://127.0.0.1:$((PORT_BASE + k))/ws")
    done
    for k in "${RELAY_PIDS[@]}" "$NATS_PID"; do pids_args+=(--server-pid "$k"); done
    log "scale: $RELAYS relays (pids ${RELAY_PIDS[*]}), nats-server $NATS_PID, $CONNECTIONS subscribers, $RATE events/s"
    sampler $((limit + 30)) "${RELAY_PIDS[@]}" "$NATS_PID" >"$WORK/samples" &
    local sampler_pid=$!
    STARTED+=("$sampler_pid")
    sleep 2 # two samples before the first connection
    run_swarm scale "$limit" - fanout "${urls[@]}" \
        --connections "$CONNECTIONS" --per-source "$PER_SOURCE" "${pids_args[@]}" \
        --publish-url "http://127.0.0.1:$PORT_BASE/api/publish" \
        --rate "$RATE" --duration "${DURATION}s" --warmup "${WARMUP}s" --payload "$PAYLOAD"
    for ((k = 0; k < RELAYS; k++)); do
        relay_counters $((PORT_BASE + k)) | sed "s/^/$((PORT_BASE + k)) /"
    done >"$WORK/counters"
    stop_pid "$sampler_pid"
    drops1=$(softnet_dropped)
    python3 - "$WORK/samples" "$WORK/counters" "$NATS_PID" "$CONNECTIONS" \
        "$(getconf PAGESIZE)" "${RELAY_PIDS[@]}" >"$WORK/scale.json" <<'PY'
import json, sys
samples_file, counters_file, nats, conns, page = sys.argv[1:6]
relays = sys.argv[6:]
rows = []
for line in open(samples_file):
    f = line.split()
    row = {"t": float(f[0]), "procs": {}}
    for item in f[1:]:
        key, _, val = item.partition(":")
        if key == "tcp":
            inuse, mem = val.split(":")
            row["tcp_inuse"], row["tcp_mem_pages"] = int(inuse), int(mem)
        elif key in ("sockets", "slab"):
            row[key] = int(val)
        else:
            rss, fds = val.split(":")
            row["procs"][key] = (int(rss or 0), int(fds or 0))
    rows.append(row)
if not rows:
    sys.exit("no samples")
base = rows[0]
# While every socket is open: the samples with the most TCP sockets in use
# (not the teardown, when RSS is still high but sockets are going). Memory
# is read at the last of them, after the events have flowed.
most = max(r["tcp_inuse"] for r in rows)
held = [r for r in rows if r["tcp_inuse"] >= most]
peak = held[-1]
counters = {}
for line in open(counters_file):
    port, name, value = line.split()
    counters.setdefault(port, {})[name] = float(value)
n = int(conns)
relay_rss = {p: peak["procs"][p][0] for p in relays}
relay_rss_base = {p: base["procs"][p][0] for p in relays}
out = {
    "relays": len(relays),
    "connections": n,
    "relay_rss_kib": relay_rss,
    "relay_rss_kib_before": relay_rss_base,
    "relay_fds": {p: peak["procs"][p][1] for p in relays},
    "relay_fds_max_seen": {p: max(r["procs"].get(p, (0, 0))[1] for r in rows) for p in relays},
    "nats_rss_kib": peak["procs"][nats][0],
    "nats_rss_kib_before": base["procs"][nats][0],
    "nats_rss_kib_max": max(r["procs"].get(nats, (0, 0))[0] for r in rows),
    "tcp_inuse": peak["tcp_inuse"], "tcp_inuse_before": base["tcp_inuse"],
    "tcp_mem_bytes": peak["tcp_mem_pages"] * int(page),
    "tcp_mem_bytes_before": base["tcp_mem_pages"] * int(page),
    "tcp_mem_bytes_max": max(r["tcp_mem_pages"] for r in held) * int(page),
    "seconds_held": held[-1]["t"] - held[0]["t"],
    "slab_kib": peak["slab"], "slab_kib_before": base["slab"],
    "seconds_sampled": rows[-1]["t"] - rows[0]["t"],
    "relay_counters": counters,
}
out["per_connection_bytes"] = {
    "relays_rss": sum(relay_rss.values()) * 1024 / n,
    "relays_rss_growth": (sum(relay_rss.values()) - sum(relay_rss_base.values())) * 1024 / n,
    "nats_rss": out["nats_rss_kib"] * 1024 / n,
    "tcp_buffers": out["tcp_mem_bytes"] / n,
    "tcp_buffers_max": out["tcp_mem_bytes_max"] / n,
    # Both ends of each loopback connection are in this machine's Slab.
    "slab_growth_both_ends": (out["slab_kib"] - out["slab_kib_before"]) * 1024 / n,
}
print(json.dumps(out))
PY
    record scale scale fleet $((drops1 - drops0)) "$WORK/scale.json"
    stop_all
    sed 's/^/    /' "$WORK/scale.err" >&2
}

# ---------------------------------------------------------------- hop
RUN=0
hop_one() { # mode(standalone|fleet) subscribers rate rep
    local mode=$1 subs=$2 rate=$3 rep=$4 fleet=0 drops0 drops1 name pids_args
    [[ $mode == fleet ]] && fleet=1
    RUN=$((RUN + 1))
    name="hop$RUN-$mode-${subs}x$rate"
    log "run $RUN: $mode, $subs subscribers x $rate/s (rep $rep)"
    RELAY_PIDS=()
    NATS_PID=
    drops0=$(softnet_dropped)
    if ((fleet)) && ! start_nats "$NATS_CPU"; then stop_all; return 1; fi
    write_config "$WORK/$mode.toml" "$fleet"
    if ! start_relay "$PORT_BASE" "$WORK/$mode.toml" "$RELAY_CPU" "$fleet"; then
        stop_all
        return 1
    fi
    pids_args=(--server-pid "${RELAY_PIDS[0]}")
    [[ -z $NATS_PID ]] || pids_args+=(--server-pid "$NATS_PID")
    local limit=$(((subs + 999) / 1000 + ${WARMUP%.*} + ${DURATION%.*} + 120))
    run_swarm "$name" "$limit" "$SWARM_CPU" fanout --url "ws://127.0.0.1:$PORT_BASE/ws" \
        --connections "$subs" --per-source "$PER_SOURCE" "${pids_args[@]}" \
        --rate "$rate" --duration "${DURATION}s" --warmup "${WARMUP}s" --payload "$PAYLOAD"
    relay_counters "$PORT_BASE" | sed "s/^/$PORT_BASE /" >"$WORK/counters"
    drops1=$(softnet_dropped)
    python3 - "$WORK/counters" "$subs" "$rate" "$rep" "${RELAY_PIDS[0]}" "${NATS_PID:-0}" \
        >"$WORK/$name.json" <<'PY'
import json, sys
counters_file, subs, rate, rep, relay, nats = sys.argv[1:7]
counters = {}
for line in open(counters_file):
    _port, key, value = line.split()
    counters[key] = float(value)
print(json.dumps({"subscribers": int(subs), "rate": float(rate), "rep": int(rep),
                  "relay_pid": int(relay), "nats_pid": int(nats) or None,
                  "relay_counters": counters}))
PY
    record "$name" hop "$mode" $((drops1 - drops0)) "$WORK/$name.json"
    stop_all
    sleep 1 # let the closed sockets settle
}

hop() {
    local rep shape subs rate first second
    for ((rep = 1; rep <= REPS; rep++)); do
        # Alternate which mode goes first, so a drift in the machine's load
        # does not favour one.
        if ((rep % 2)); then first=standalone second=fleet; else first=fleet second=standalone; fi
        for shape in ${SHAPES//,/ }; do
            subs=${shape%x*} rate=${shape#*x}
            hop_one "$first" "$subs" "$rate" "$rep" || { log "  $first run failed"; FAILED=$((FAILED + 1)); }
            hop_one "$second" "$subs" "$rate" "$rep" || { log "  $second run failed"; FAILED=$((FAILED + 1)); }
        done
    done
}

# ---------------------------------------------------------------- run, report
log "nats-server: $("$NATS_BIN" --version 2>&1 | head -1); mode: $( ((JETSTREAM)) && echo JetStream || echo core NATS)"
FAILED=0
if [[ $SCENARIO == scale ]]; then scale || { log "scale run failed"; FAILED=1; }; else hop; fi

python3 - "$OUT" <<'PY' || FAILED=$((FAILED + 1))
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def num(v, fmt):
    return "-" if v is None else format(v, fmt)

def ph(r):
    return (r["result"] or {}).get("phase") or {}

def ms(r, q):
    lat = ph(r).get("latency") or {}
    return lat[q] / 1000 if q in lat else None

def cpu_per_m(r, pid):
    p = ph(r)
    s = (p.get("server_cpu_s_by_pid") or {}).get(str(pid)) if pid else None
    return s / p["received"] * 1e6 if s is not None and p.get("received") else None

for r in rows:
    f, p = r["fleet"], ph(r)
    if r["result"] is None:
        print(f"{f['run']}: no RESULT from the swarm; its stderr ends with:\n{f['swarm_stderr_tail']}")
if rows and rows[0]["fleet"]["scenario"] == "scale":
    r = rows[0]
    f, p = r["fleet"], ph(r)
    if r["result"] is None:
        sys.exit(1)
    pc = f["per_connection_bytes"]
    print()
    print(f"{f['connections']} subscribers over {f['relays']} relays on one nats-server"
          f" ({'JetStream' if f['jetstream'] else 'core NATS'})")
    print(f"  ready {r['result']['connect'].get('ready')}, delivered/expected {p['received']}/{p['expected']}"
          f" = {p['completeness']:.6f}, seq gaps {p['seq_gaps']}, closes {p['closes']}")
    print(f"  {p['events_per_s']:.2f} events/s, {p['deliveries_per_s']:.0f} deliveries/s;"
          f" latency p50 {ms(r, 'p50_us'):.1f} ms, p99 {ms(r, 'p99_us'):.1f} ms, max {ms(r, 'max_us'):.1f} ms")
    print(f"  CPU: relays + NATS {num(p.get('server_cpu_s_per_million'), '.2f')} s per million deliveries"
          f" ({num(p.get('server_cores'), '.2f')} cores); swarm {num(p.get('swarm_cores'), '.2f')} cores")
    for pid, rss in f["relay_rss_kib"].items():
        print(f"  relay {pid}: RSS {rss / 1024:.1f} MiB (before {f['relay_rss_kib_before'][pid] / 1024:.1f}),"
              f" open files {f['relay_fds'][pid]} (most seen {f['relay_fds_max_seen'][pid]}),"
              f" CPU {num((p.get('server_cpu_s_by_pid') or {}).get(pid), '.2f')} s")
    print(f"  nats-server: RSS {f['nats_rss_kib'] / 1024:.1f} MiB (before {f['nats_rss_kib_before'] / 1024:.1f},"
          f" most seen {f['nats_rss_kib_max'] / 1024:.1f})")
    print(f"  kernel: TCP sockets in use {f['tcp_inuse']} (before {f['tcp_inuse_before']}),"
          f" TCP buffers {f['tcp_mem_bytes'] / 2**20:.1f} MiB (most seen while all were open"
          f" {f['tcp_mem_bytes_max'] / 2**20:.1f}),"
          f" Slab +{(f['slab_kib'] - f['slab_kib_before']) / 1024:.0f} MiB")
    print(f"  per connection: relays' RSS {pc['relays_rss']:.0f} B ({pc['relays_rss_growth']:.0f} B of growth),"
          f" NATS {pc['nats_rss']:.1f} B, kernel TCP buffers {pc['tcp_buffers']:.0f} B"
          f" (at most {pc['tcp_buffers_max']:.0f}),"
          f" kernel Slab {pc['slab_growth_both_ends']:.0f} B for both ends")
    for port, c in sorted(f["relay_counters"].items()):
        print(f"  relay :{port} " + ", ".join(f"{k.removeprefix('tidings_')} {v:g}" for k, v in sorted(c.items())))
    print(f"  softnet drops during the run: {f['softnet_dropped']}")
    sys.exit(0 if p["completeness"] >= 1.0 else 1)

groups = {}
for r in rows:
    f = r["fleet"]
    groups.setdefault((f["subscribers"], f["rate"]), {}).setdefault(f["mode"], []).append(r)
print()
print("the NATS hop: one relay standalone against the same relay in fleet mode "
      f"({'JetStream' if rows and rows[0]['fleet']['jetstream'] else 'core NATS'}); medians over the reps")
head = (f"{'shape':<14} {'mode':<11} {'runs':>4} {'compl':>8} {'deliv/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'relay s/M':>9} {'NATS s/M':>9} {'total s/M':>9} {'drops':>5}")
print(head)
print("-" * len(head))
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
for (subs, rate), modes in groups.items():
    for mode in ("standalone", "fleet"):
        rs = modes.get(mode, [])
        relay = [cpu_per_m(r, r["fleet"]["relay_pid"]) for r in rs]
        nats = [cpu_per_m(r, r["fleet"]["nats_pid"]) for r in rs]
        total = [a + (b or 0) if a is not None else None for a, b in zip(relay, nats)]
        print(f"{f'{subs} x {rate:g}/s':<14} {mode:<11} {len(rs):>4} "
              f"{num(med([ph(r).get('completeness') for r in rs]), '.5f'):>8} "
              f"{num(med([ph(r).get('deliveries_per_s') for r in rs]), '.0f'):>9} "
              f"{num(med([ms(r, 'p50_us') for r in rs]), '.2f'):>7} {num(med([ms(r, 'p99_us') for r in rs]), '.2f'):>7} "
              f"{num(med(relay), '.2f'):>9} {num(med(nats), '.2f'):>9} {num(med(total), '.2f'):>9} "
              f"{sum(r['fleet']['softnet_dropped'] for r in rs):>5}")
    for r in modes.get("standalone", []) + modes.get("fleet", []):
        f = r["fleet"]
        print(f"    rep {f['rep']} {f['mode']:<11} p50 {num(ms(r, 'p50_us'), '.2f')} p99 {num(ms(r, 'p99_us'), '.2f')}"
              f" relay {num(cpu_per_m(r, f['relay_pid']), '.2f')} NATS {num(cpu_per_m(r, f['nats_pid']), '.2f')} s/M"
              f" compl {num(ph(r).get('completeness'), '.5f')}")
print("columns: compl = received/expected; s/M = CPU seconds per million deliveries over the swarm's")
print("  phase (warmup + window + drain), relay and nats-server apart; drops = /proc/net/softnet_stat")
PY
log "raw results: $OUT"
log "relay, nats-server and swarm logs: $WORK"
((FAILED == 0)) || { log "$FAILED run(s) failed to start (see above)"; exit 1; }
