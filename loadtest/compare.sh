#!/usr/bin/env bash
# Side-by-side comparison of tidings with three peers speaking the same
# protocol subset (loadtest/peers/): Bun pub/sub (uWebSockets), Node `ws`,
# and a naive Node `net` server that writes each event to each socket at once.
#
# Not part of CI. Loopback only (127.0.0.0/8). Needs cargo, node, npm,
# taskset and python3; installs the peers with npm on first use.
#
#   loadtest/compare.sh              the full comparison (several minutes)
#   loadtest/compare.sh --quick      a short smoke: 200 connections, 3 s
#   loadtest/compare.sh --publisher single:2   one event per POST over 2 connections
#   loadtest/compare.sh --servers tidings,tidings-deflate,bun,bun-deflate   compression on and off
#   loadtest/compare.sh --servers tidings,tidings-nohistory,bun   what the history costs
#   loadtest/compare.sh --help       all flags and their environment variables
#
# Every run starts a fresh server pinned to CPU 0, runs tidings-swarm pinned to
# CPU 1 against it, keeps the swarm's RESULT json line, and stops the server.
# The json lines go to loadtest/results/compare-DATE.jsonl; a table with the
# tidings/peer ratios is printed at the end.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=$ROOT/loadtest/peers
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

usage() {
    cat <<'EOF'
Usage: loadtest/compare.sh [flags]

Scenarios (each against every server, back to back):
  fanout-a   --a-conns subscribers on one channel, one run per rate in --a-rates
  fanout-b   --b-conns subscribers on one channel, one run per rate in --b-rates
  idle       --idle-conns subscribed sockets held --idle-hold, reports server RSS/conn
  resume     --resume-conns clients drop at once while --resume-rate events/s flow, and
             come back with `since` (tidings-swarm storm --lead): missed, recovered,
             replayed events/s, p99 catch-up, relay CPU. tidings only: the peers keep no
             history, so they are skipped with a note

Flags (environment variable in brackets; a flag wins over its variable):
  --quick                 smoke test: fanout-a and idle with 200 connections, 3 s
  --servers LIST          comma list of tidings,bun,ws,naive,baseline [COMPARE_SERVERS],
                          and tidings-deflate (compression = "on") and bun-deflate
                          (perMessageDeflate, publish with compress): against these two the
                          swarm offers permessage-deflate (--deflate), and the table
                          compares bun-deflate with tidings-deflate; tidings-nohistory
                          (history.max_events = 0: no history, no resume) shows what
                          appending to the history costs
  --scenarios LIST        comma list of fanout-a,fanout-b,idle    [COMPARE_SCENARIOS]
  --a-conns N             default 1000                            [COMPARE_A_CONNS]
  --a-rates LIST          events/s, comma list, default 100       [COMPARE_A_RATES]
  --b-conns N             default 10000                           [COMPARE_B_CONNS]
  --b-rates LIST          events/s, comma list, default 10        [COMPARE_B_RATES]
  --idle-conns N          default 19000                           [COMPARE_IDLE_CONNS]
  --idle-hold SECS        default 10                              [COMPARE_IDLE_HOLD]
  --resume-conns N        default 10000                           [COMPARE_RESUME_CONNS]
  --resume-rate R         events/s before, during and after the drop, default 100 [COMPARE_RESUME_RATE]
  --resume-lead SECS      publishing before the drop, default 2   [COMPARE_RESUME_LEAD]
  --duration SECS         measured window of a fanout run, default 15 [COMPARE_DURATION]
  --warmup SECS           publishing before the window, default 2 [COMPARE_WARMUP]
  --payload BYTES         bytes of each event's data, default 150 [COMPARE_PAYLOAD]
  --publisher LIST        how the fanout runs publish, comma list, each run once per entry:
                          batch     one connection, the events due in each POST (default)
                          single:K  one event per POST over K kept-alive connections,
                                    one request in flight on each
                          recorded as compare.publisher and in the table's pub column [COMPARE_PUBLISHER]
  --port-base N           first port; each run takes the next one, default 18700 [COMPARE_PORT_BASE]
  --server-cpu N          CPU for the server, default 0           [COMPARE_SERVER_CPU]
  --tidings-reactors N    tidings' reactors, default 1 (one core, like its peers)
                          [COMPARE_TIDINGS_REACTORS]
  --baseline BIN          a tidings binary built from another commit, run as the server
                          `baseline` (add it to --servers): a hot-path change measured
                          against the code before it, in the same run [COMPARE_BASELINE]
  --swarm-cpu N           CPU for the swarm, default 1            [COMPARE_SWARM_CPU]
  --swarm-extra "ARGS"    extra flags appended to every swarm run [COMPARE_SWARM_EXTRA]
  --per-source N          swarm connections per source address (127.0.0.2, .3, ...),
                          default 5000: one address for 19,000 sockets makes the
                          kernel's ephemeral port search cap connects near 1,200/s [COMPARE_PER_SOURCE]
  --out FILE              results file, default loadtest/results/compare-DATE.jsonl [COMPARE_OUT]
  --raise-backlog[=N]     set net.core.netdev_max_backlog to N (default 16384) for
                          the whole comparison and restore it afterwards
  --no-build              skip cargo build (use the existing target/release binaries)
  -h, --help              this text
EOF
}

# ---------------------------------------------------------------- settings
QUICK=0
for a in "$@"; do [[ $a == --quick ]] && QUICK=1; done
if ((QUICK)); then
    d_scen=fanout-a,idle d_a_conns=200 d_b_conns=200 d_idle=200 d_hold=3 d_dur=3 d_warm=1 d_resume=200
else
    d_scen=fanout-a,fanout-b,idle d_a_conns=1000 d_b_conns=10000 d_idle=19000 d_hold=10 d_dur=15 d_warm=2 d_resume=10000
fi
SERVERS=${COMPARE_SERVERS:-tidings,bun,ws,naive}
SCENARIOS=${COMPARE_SCENARIOS:-$d_scen}
A_CONNS=${COMPARE_A_CONNS:-$d_a_conns}
A_RATES=${COMPARE_A_RATES:-100}
B_CONNS=${COMPARE_B_CONNS:-$d_b_conns}
B_RATES=${COMPARE_B_RATES:-10}
IDLE_CONNS=${COMPARE_IDLE_CONNS:-$d_idle}
IDLE_HOLD=${COMPARE_IDLE_HOLD:-$d_hold}
RESUME_CONNS=${COMPARE_RESUME_CONNS:-$d_resume}
RESUME_RATE=${COMPARE_RESUME_RATE:-100}
RESUME_LEAD=${COMPARE_RESUME_LEAD:-2}
DURATION=${COMPARE_DURATION:-$d_dur}
WARMUP=${COMPARE_WARMUP:-$d_warm}
PAYLOAD=${COMPARE_PAYLOAD:-150}
PUBLISHERS=${COMPARE_PUBLISHER:-batch}
PORT_BASE=${COMPARE_PORT_BASE:-18700}
SERVER_CPU=${COMPARE_SERVER_CPU:-0}
TIDINGS_REACTORS=${COMPARE_TIDINGS_REACTORS:-1}
BASELINE=${COMPARE_BASELINE:-}
SWARM_CPU=${COMPARE_SWARM_CPU:-1}
SWARM_EXTRA=${COMPARE_SWARM_EXTRA:-}
PER_SOURCE=${COMPARE_PER_SOURCE:-5000}
OUT=${COMPARE_OUT:-}
RAISE_BACKLOG=
BUILD=1

need() { [[ $# -ge 2 && -n $2 ]] || { echo "compare.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) ;;
        --servers) need "$@"; SERVERS=$2; shift ;;
        --scenarios) need "$@"; SCENARIOS=$2; shift ;;
        --a-conns) need "$@"; A_CONNS=$2; shift ;;
        --a-rates) need "$@"; A_RATES=$2; shift ;;
        --b-conns) need "$@"; B_CONNS=$2; shift ;;
        --b-rates) need "$@"; B_RATES=$2; shift ;;
        --idle-conns) need "$@"; IDLE_CONNS=$2; shift ;;
        --idle-hold) need "$@"; IDLE_HOLD=$2; shift ;;
        --resume-conns) need "$@"; RESUME_CONNS=$2; shift ;;
        --resume-rate) need "$@"; RESUME_RATE=$2; shift ;;
        --resume-lead) need "$@"; RESUME_LEAD=$2; shift ;;
        --duration) need "$@"; DURATION=$2; shift ;;
        --warmup) need "$@"; WARMUP=$2; shift ;;
        --payload) need "$@"; PAYLOAD=$2; shift ;;
        --publisher) need "$@"; PUBLISHERS=$2; shift ;;
        --port-base) need "$@"; PORT_BASE=$2; shift ;;
        --server-cpu) need "$@"; SERVER_CPU=$2; shift ;;
        --tidings-reactors) need "$@"; TIDINGS_REACTORS=$2; shift ;;
        --baseline) need "$@"; BASELINE=$2; shift ;;
        --swarm-cpu) need "$@"; SWARM_CPU=$2; shift ;;
        --swarm-extra) need "$@"; SWARM_EXTRA=$2; shift ;;
        --per-source) need "$@"; PER_SOURCE=$2; shift ;;
        --out) need "$@"; OUT=$2; shift ;;
        --raise-backlog) RAISE_BACKLOG=16384 ;;
        --raise-backlog=*) RAISE_BACKLOG=${1#*=} ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in A_CONNS B_CONNS IDLE_CONNS RESUME_CONNS PAYLOAD PORT_BASE SERVER_CPU SWARM_CPU PER_SOURCE; do
    is_uint "${!v}" || { echo "compare.sh: $v=${!v} is not a whole number" >&2; exit 2; }
done
for v in IDLE_HOLD DURATION WARMUP RESUME_RATE RESUME_LEAD; do
    is_num "${!v}" || { echo "compare.sh: $v=${!v} is not a number of seconds" >&2; exit 2; }
done
for r in ${A_RATES//,/ } ${B_RATES//,/ }; do
    is_num "$r" || { echo "compare.sh: rate $r is not a number" >&2; exit 2; }
done
for s in ${SERVERS//,/ }; do
    [[ $s =~ ^(tidings|tidings-deflate|tidings-nohistory|bun|bun-deflate|ws|naive|baseline)$ ]] || { echo "compare.sh: unknown server $s" >&2; exit 2; }
done
for s in ${SCENARIOS//,/ }; do
    [[ $s =~ ^(fanout-a|fanout-b|idle|resume)$ ]] || { echo "compare.sh: unknown scenario $s" >&2; exit 2; }
done
for p in ${PUBLISHERS//,/ }; do
    [[ $p =~ ^(batch|single:[1-9][0-9]*)$ ]] || { echo "compare.sh: publisher $p is not batch or single:K" >&2; exit 2; }
done
if [[ -n $RAISE_BACKLOG ]] && ! is_uint "$RAISE_BACKLOG"; then
    echo "compare.sh: --raise-backlog=$RAISE_BACKLOG is not a whole number" >&2; exit 2
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
[[ -n $OUT ]] || OUT=$ROOT/loadtest/results/compare-$STAMP.jsonl
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/tidings-compare.XXXXXX")

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- cleanup
STARTED=()          # pids of servers this script started
SWARM_PID=          # the running swarm's `timeout` wrapper
BACKLOG_ORIG=
BACKLOG_FILE=/proc/sys/net/core/netdev_max_backlog

stop_pid() { # pid: TERM, up to 5 s, then KILL; only ever this one pid
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

set_backlog() {
    if command -v sysctl >/dev/null && sysctl -q -w "net.core.netdev_max_backlog=$1" >/dev/null 2>&1; then
        return 0
    fi
    { echo "$1" >"$BACKLOG_FILE"; } 2>/dev/null
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    [[ -z $SWARM_PID ]] || stop_pid "$SWARM_PID"
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    STARTED=()
    if [[ -n $BACKLOG_ORIG ]]; then
        if set_backlog "$BACKLOG_ORIG"; then
            log "restored net.core.netdev_max_backlog to $BACKLOG_ORIG (now $(cat "$BACKLOG_FILE"))"
        else
            log "WARNING: could not restore net.core.netdev_max_backlog to $BACKLOG_ORIG"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- setup
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
log "open-file limit $NOFILE"
need_fds=$IDLE_CONNS
[[ $B_CONNS -gt $need_fds ]] && need_fds=$B_CONNS
[[ ,$SCENARIOS, == *,resume,* && $RESUME_CONNS -gt $need_fds ]] && need_fds=$RESUME_CONNS
if [[ $NOFILE != unlimited && $NOFILE -lt $((need_fds + 200)) ]]; then
    log "WARNING: ulimit -n $NOFILE is low for $need_fds connections; the servers may refuse some"
fi

NCPU=$(nproc)
if ((NCPU < 2)) || ((SERVER_CPU >= NCPU)) || ((SWARM_CPU >= NCPU)); then
    log "WARNING: $NCPU CPU(s): cannot pin server to $SERVER_CPU and swarm to $SWARM_CPU; both share CPU 0"
    SERVER_CPU=0 SWARM_CPU=0
fi
if ((NCPU > 2)); then
    log "note: other processes may use CPUs $SERVER_CPU/$SWARM_CPU; an otherwise idle machine gives the fairest numbers"
fi

for tool in taskset python3 node npm; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool not found" >&2; exit 1; }
done

if ((BUILD)); then
    log "cargo build --release -p tidings -p tidings-loadtest"
    (cd "$ROOT" && cargo build --release -p tidings -p tidings-loadtest)
fi
TIDINGS=$TARGET_DIR/release/tidings
SWARM=$TARGET_DIR/release/tidings-swarm
[[ -x $TIDINGS && -x $SWARM ]] || { echo "compare.sh: $TIDINGS or $SWARM missing (build failed?)" >&2; exit 1; }

wants() { [[ ,$SERVERS, == *,$1,* ]]; }
if wants baseline; then
    [[ -x $BASELINE ]] || { echo "compare.sh: --servers has baseline but --baseline names no executable ('$BASELINE')" >&2; exit 2; }
    # Builds from before the reactors existed have no --reactors (one reactor).
    BASELINE_CMD=("$BASELINE")
    if "$BASELINE" --help 2>/dev/null | grep -q -- --reactors; then
        BASELINE_CMD+=(--reactors "$TIDINGS_REACTORS")
    fi
fi
if wants bun || wants bun-deflate || wants ws || wants naive; then
    if [[ ! -d $PEERS/node_modules ]]; then
        log "installing peers (npm) in $PEERS"
        if [[ -f $PEERS/package-lock.json ]]; then
            (cd "$PEERS" && npm ci --no-audit --no-fund)
        else
            (cd "$PEERS" && npm install --no-audit --no-fund)
        fi
    fi
fi
BUN=${BUN:-$PEERS/node_modules/.bin/bun}
if { wants bun || wants bun-deflate; } && ! "$BUN" --version >/dev/null 2>&1; then
    # The npm `bun` package's postinstall links the platform binary; if that
    # did not run, use the binary of the @oven/bun-linux-* package directly.
    BUN=
    for c in "$PEERS"/node_modules/@oven/bun-linux-*/bin/bun; do
        if [[ -x $c ]] && "$c" --version >/dev/null 2>&1; then BUN=$c; break; fi
    done
    [[ -n $BUN ]] || { echo "compare.sh: no working bun binary under $PEERS/node_modules" >&2; exit 1; }
fi

version_of() {
    case $1 in
        tidings) "$TIDINGS" --version 2>/dev/null | head -1 ;;
        tidings-deflate) echo "$("$TIDINGS" --version 2>/dev/null | head -1) compression=on" ;;
        tidings-nohistory) echo "$("$TIDINGS" --version 2>/dev/null | head -1) history off" ;;
        baseline) echo "$("$BASELINE" --version 2>/dev/null | head -1) (baseline)" ;;
        bun) echo "bun $("$BUN" --version 2>/dev/null)" ;;
        bun-deflate) echo "bun $("$BUN" --version 2>/dev/null) perMessageDeflate" ;;
        ws) echo "node $(node --version) ws $(node -p 'require(process.argv[1]).version' "$PEERS/node_modules/ws/package.json" 2>/dev/null)" ;;
        naive) echo "node $(node --version) net" ;;
    esac
}

softnet_dropped() { # sum of column 2 (dropped, hex) over all CPUs
    local total=0 _p dropped _rest
    while read -r _p dropped _rest; do
        total=$((total + 16#$dropped))
    done </proc/net/softnet_stat
    echo "$total"
}

if [[ -n $RAISE_BACKLOG ]]; then
    orig=$(cat "$BACKLOG_FILE")
    if set_backlog "$RAISE_BACKLOG"; then
        BACKLOG_ORIG=$orig
        log "raised net.core.netdev_max_backlog from $orig to $(cat "$BACKLOG_FILE") for this comparison (restored on exit)"
    else
        log "WARNING: could not raise net.core.netdev_max_backlog (read-only /proc/sys here?); it stays $orig"
    fi
fi

cpu_busy() { # percent busy of the server and swarm CPUs over one second, before a run
    python3 - "$SERVER_CPU" "$SWARM_CPU" <<'PY'
import sys, time
def snap():
    out = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            v = list(map(int, f[1:9]))
            out[f[0][3:]] = (sum(v), v[3] + v[4])  # total, idle + iowait
    return out
a = snap(); time.sleep(1.0); b = snap()
def busy(c):
    if c not in a or c not in b:
        return -1
    t = b[c][0] - a[c][0]; i = b[c][1] - a[c][1]
    return round(100 * (t - i) / t) if t else 0
print(busy(sys.argv[1]), busy(sys.argv[2]))
PY
}

# ---------------------------------------------------------------- one run
stop_servers() { # stops what start_server started; forgets the pids so a reused pid is never hit
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    STARTED=()
}

SERVER_PID=
BUSY_SERVER=-1 BUSY_SWARM=-1 LOADAVG=

listening_pid() { # port -> pid of the process listening on 127.0.0.1:port (via ss), or nothing
    command -v ss >/dev/null || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

start_server() { # name port
    local name=$1 port=$2 i cmd
    case $name in
        tidings) cmd=("$TIDINGS" --listen "127.0.0.1:$port" --reactors "$TIDINGS_REACTORS") ;;
        tidings-deflate)
            # Every other setting at its default, as for `tidings`.
            printf 'compression = "on"\n' >"$LOGS/tidings-deflate.toml"
            cmd=("$TIDINGS" --config "$LOGS/tidings-deflate.toml" --listen "127.0.0.1:$port"
                --reactors "$TIDINGS_REACTORS") ;;
        tidings-nohistory)
            # Every other setting at its default, as for `tidings`.
            printf '[history]\nmax_events = 0\n' >"$LOGS/tidings-nohistory.toml"
            cmd=("$TIDINGS" --config "$LOGS/tidings-nohistory.toml" --listen "127.0.0.1:$port"
                --reactors "$TIDINGS_REACTORS") ;;
        baseline) cmd=("${BASELINE_CMD[@]}" --listen "127.0.0.1:$port") ;;
        bun) cmd=("$BUN" "$PEERS/bun-server.js" "$port") ;;
        bun-deflate) cmd=("$BUN" "$PEERS/bun-server.js" "$port" --deflate) ;;
        ws) cmd=(node "$PEERS/node-ws-server.js" "$port") ;;
        naive) cmd=(node "$PEERS/naive-server.js" "$port") ;;
    esac
    PORT=$port HOST=127.0.0.1 taskset -c "$SERVER_CPU" "${cmd[@]}" >"$LOGS/$name-$port.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    # Bounded wait: 20 s for the port to accept a connection.
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited before listening; log:"; tail -20 "$LOGS/$name-$port.log" >&2
            return 1
        fi
        if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            local lp
            lp=$(listening_pid "$port")
            if [[ -n $lp && $lp != "$SERVER_PID" ]]; then
                log "note: $name listens as pid $lp (started $SERVER_PID); measuring $lp"
                SERVER_PID=$lp
                STARTED+=("$lp")
            fi
            return 0
        fi
        sleep 0.1
    done
    log "$name did not accept connections on port $port within 20 s"
    return 1
}

# The one place the swarm command line is put together: adjust here if the
# swarm's flags change. Fills SWARM_CMD and SWARM_TIMEOUT.
swarm_cmd() { # mode port conns server_pid server [rate publisher]
    local mode=$1 port=$2 conns=$3 pid=$4 server=$5 rate=${6:-} publisher=${7:-batch}
    SWARM_CMD=("$SWARM" "$mode"
        --url "ws://127.0.0.1:$port/ws"
        --connections "$conns"
        --per-source "$PER_SOURCE"
        --server-pid "$pid")
    # The compressing servers get a swarm that offers permessage-deflate.
    [[ $server != *-deflate ]] || SWARM_CMD+=(--deflate)
    local connect_s=$(((conns + 999) / 1000))  # at the swarm's default 5000/s, with slack
    case $mode in
        fanout)
            SWARM_CMD+=(--publish-url "http://127.0.0.1:$port/api/publish"
                --rate "$rate" --duration "${DURATION}s" --warmup "${WARMUP}s" --payload "$PAYLOAD")
            case $publisher in
                batch) SWARM_CMD+=(--publish-mode batch) ;;
                single:*) SWARM_CMD+=(--publish-mode single --publish-conns "${publisher#single:}") ;;
            esac
            SWARM_TIMEOUT=$(python3 -c "print(int($connect_s + $WARMUP + $DURATION + 120))")
            ;;
        idle)
            SWARM_CMD+=(--duration "${IDLE_HOLD}s")
            SWARM_TIMEOUT=$(python3 -c "print(int($connect_s + $IDLE_HOLD + 120))")
            ;;
        storm)
            # The resume scenario: events flow for the lead, every client
            # drops, and comes back with `since` (the swarm's default).
            SWARM_CMD+=(--publish-url "http://127.0.0.1:$port/api/publish"
                --rate "$rate" --lead "${RESUME_LEAD}s" --payload "$PAYLOAD"
                --deadline 60s --seed 1)
            SWARM_TIMEOUT=$(python3 -c "print(int($connect_s + $RESUME_LEAD + 60 + 120))")
            ;;
    esac
    if [[ -n $SWARM_EXTRA ]]; then
        local extra
        read -r -a extra <<<"$SWARM_EXTRA"
        SWARM_CMD+=("${extra[@]}")
    fi
}

RUN=0
run_one() { # scenario mode conns server [rate publisher]
    local scenario=$1 mode=$2 conns=$3 server=$4 rate=${5:-} publisher=${6:-}
    local port=$((PORT_BASE + RUN))
    RUN=$((RUN + 1))
    local label="$scenario $server conns=$conns${rate:+ rate=$rate/s}${publisher:+ publisher=$publisher}"
    local base="$LOGS/run$RUN-$scenario-$server"
    log "run $RUN: $label (port $port)"
    local drops0 drops1 rc=0 alive=true version
    version=$(version_of "$server")
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
    read -r BUSY_SERVER BUSY_SWARM < <(cpu_busy)
    if ((BUSY_SERVER > 10 || BUSY_SWARM > 10)); then
        log "  WARNING: before the run CPU $SERVER_CPU was ${BUSY_SERVER}% and CPU $SWARM_CPU ${BUSY_SWARM}% busy with other work: figures will be noisy"
    fi
    drops0=$(softnet_dropped)
    if ! start_server "$server" "$port"; then
        stop_servers
        record "$scenario" "$server" "$conns" "$rate" "$publisher" "$version" 0 false 1 "$base" "server did not start"
        return 0
    fi
    swarm_cmd "$mode" "$port" "$conns" "$SERVER_PID" "$server" "$rate" "$publisher"
    printf '%q ' taskset -c "$SWARM_CPU" "${SWARM_CMD[@]}" >"$base.cmd"
    # In the background and waited for, so a signal to this script runs its
    # trap at once (timeout passes TERM/INT on to the swarm).
    timeout --kill-after=10 "$SWARM_TIMEOUT" taskset -c "$SWARM_CPU" "${SWARM_CMD[@]}" \
        >"$base.out" 2>"$base.err" </dev/null &
    SWARM_PID=$!
    wait "$SWARM_PID" || rc=$?
    SWARM_PID=
    kill -0 "$SERVER_PID" 2>/dev/null || alive=false
    stop_servers
    drops1=$(softnet_dropped)
    local err=
    if ((rc != 0)); then
        err="swarm exit $rc: $(tail -3 "$base.err" | tr '\n' ' ')"
        log "  FAILED: $err"
    fi
    [[ $alive == true ]] || log "  WARNING: $server died during the run (see $LOGS/$server-$port.log)"
    ((drops1 - drops0 == 0)) || log "  softnet drops during the run: $((drops1 - drops0))"
    sed 's/^/    /' "$base.err" >&2
    record "$scenario" "$server" "$conns" "$rate" "$publisher" "$version" "$((drops1 - drops0))" "$alive" "$rc" "$base" "$err"
    sleep 1 # let the closed sockets settle before the next server starts
}

record() { # scenario server conns rate publisher version drops alive rc base err  -> one json line in $OUT
    python3 - "$@" "$OUT" "$STAMP" "$SERVER_CPU" "$SWARM_CPU" "${BACKLOG_ORIG:+$RAISE_BACKLOG}" \
        "$BUSY_SERVER" "$BUSY_SWARM" "$LOADAVG" <<'PY'
import json, sys
(scenario, server, conns, rate, publisher, version, drops, alive, rc, base, err,
 out, stamp, server_cpu, swarm_cpu, backlog, busy_server, busy_swarm, loadavg) = sys.argv[1:20]
result = None
try:
    for line in open(base + ".out", encoding="utf-8", errors="replace"):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
except OSError:
    pass
try:
    cmd = open(base + ".cmd").read().strip()
except OSError:
    cmd = None
rec = {
    "compare": {
        "stamp": stamp,
        "scenario": scenario,
        "server": server,
        "server_version": version,
        "connections": int(conns),
        "rate": float(rate) if rate else None,
        "publisher": publisher or None,
        "softnet_dropped": int(drops),
        "server_alive_at_end": alive == "true",
        "swarm_exit": int(rc),
        "error": err or (None if result else "no RESULT line"),
        "server_cpu": int(server_cpu),
        "swarm_cpu": int(swarm_cpu),
        "netdev_max_backlog": int(backlog) if backlog else int(open("/proc/sys/net/core/netdev_max_backlog").read()),
        "swarm_cmd": cmd,
        "cpu_busy_before_pct": {"server_cpu": int(busy_server), "swarm_cpu": int(busy_swarm)},
        "loadavg_before": loadavg,
    },
    "result": result,
}
with open(out, "a") as f:
    f.write(json.dumps(rec, separators=(",", ":")) + "\n")
PY
}

# ---------------------------------------------------------------- the runs
log "servers: $SERVERS; scenarios: $SCENARIOS; publishers: $PUBLISHERS; results: $OUT; logs: $LOGS"
log "server on CPU $SERVER_CPU, swarm on CPU $SWARM_CPU; softnet drops so far: $(softnet_dropped)"
for scenario in ${SCENARIOS//,/ }; do
    case $scenario in
        fanout-a)
            for pub in ${PUBLISHERS//,/ }; do
                for rate in ${A_RATES//,/ }; do
                    for s in ${SERVERS//,/ }; do run_one fanout-a fanout "$A_CONNS" "$s" "$rate" "$pub"; done
                done
            done ;;
        fanout-b)
            for pub in ${PUBLISHERS//,/ }; do
                for rate in ${B_RATES//,/ }; do
                    for s in ${SERVERS//,/ }; do run_one fanout-b fanout "$B_CONNS" "$s" "$rate" "$pub"; done
                done
            done ;;
        idle)
            for s in ${SERVERS//,/ }; do run_one idle idle "$IDLE_CONNS" "$s"; done ;;
        resume)
            for s in ${SERVERS//,/ }; do
                if [[ $s == tidings || $s == tidings-deflate ]]; then
                    run_one resume storm "$RESUME_CONNS" "$s" "$RESUME_RATE"
                else
                    log "resume: skipping $s: it keeps no history, so there is nothing to resume (tidings only)"
                fi
            done ;;
    esac
done

# ---------------------------------------------------------------- the table
python3 - "$OUT" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def figures(r):
    c, res = r["compare"], r["result"] or {}
    ph = res.get("phase") or {}
    lat = ph.get("latency") or {}
    conn = res.get("connect") or {}
    f = {
        "ready": conn.get("ready"),
        "deliv": ph.get("deliveries_per_s"),
        "compl": ph.get("completeness"),
        "p50": lat["p50_us"] / 1000 if "p50_us" in lat else None,
        "p99": lat["p99_us"] / 1000 if "p99_us" in lat else None,
        "wire": ph.get("wire_bytes_per_event"),
        "cpu_m": ph.get("server_cpu_s_per_million"),
        "cores": ph.get("server_cores"),
        "rss": res.get("server_rss_bytes_per_connection"),
        "drops": c["softnet_dropped"],
        "lost": None,
        "bg": max((c.get("cpu_busy_before_pct") or {}).values(), default=None),
        "pub": publisher(r),
        "pub_pct": None,
    }
    pub = ph.get("publish")
    if pub:
        f["lost"] = pub.get("rejected", 0) + pub.get("unsent", 0)
    if pub and pub.get("due"):
        f["pub_pct"] = 100 * pub.get("accepted", 0) / pub["due"]
    if res.get("mode") == "idle":
        f["open"] = res.get("open_at_end")
    return f

def publisher(r):
    # What the swarm says it did wins over what compare.sh asked for.
    res = r["result"] or {}
    return res.get("publisher") or r["compare"].get("publisher") or "-"

def num(v, fmt):
    return "-" if v is None else format(v, fmt)

def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"

notes = set()
groups = {}
for r in rows:
    c = r["compare"]
    key = (c["scenario"], c["connections"], c["rate"], c.get("publisher"))
    groups.setdefault(key, []).append(r)

head = (f"{'scenario':<22} {'pub':<9} {'pub%':>6} {'server':<15} {'ready':>6} {'deliv/s':>10} {'compl':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'cpu s/M':>8} {'cores':>6} {'B/ev':>6} {'RSS B/c':>8} {'lost':>5} {'drops':>6} {'bg%':>4}  "
        f"{'t/p deliv':>9} {'t/p p99':>8} {'t/p cpu':>8} {'t/p RSS':>8}")
print()
print("tidings vs peers (t/p = tidings value / peer value; deliv/s above 1 and p99, cpu, RSS below 1 favour tidings;")
print("  bun-deflate is compared with tidings-deflate, the other peers with tidings)")
print(head)
print("-" * len(head))
for (scenario, conns, rate, _pub), rs in groups.items():
    if scenario == "resume":
        continue
    name = f"{scenario} {conns}" + (f" @{rate:g}/s" if rate else "")
    bases = {r["compare"]["server"]: figures(r) for r in rs
             if r["compare"]["server"] in ("tidings", "tidings-deflate") and r["result"]}
    for r in rs:
        c = r["compare"]
        f = figures(r)
        base = bases.get("tidings-deflate" if c["server"].endswith("-deflate") else "tidings")
        line = (f"{name:<22} {f['pub']:<9} {num(f['pub_pct'], '.1f'):>6} {c['server']:<15} "
                f"{num(f['ready'], 'd'):>6} {num(f['deliv'], '.0f'):>10} "
                f"{num(f['compl'], '.5f'):>8} {num(f['p50'], '.2f'):>8} {num(f['p99'], '.2f'):>8} "
                f"{num(f['cpu_m'], '.3f'):>8} {num(f['cores'], '.2f'):>6} {num(f['wire'], '.0f'):>6} {num(f['rss'], '.0f'):>8} "
                f"{num(f['lost'], 'd'):>5} {f['drops']:>6} {num(f['bg'], 'd'):>4}")
        if f["bg"] is not None and f["bg"] > 10:
            notes.add("bg%: the busier of the two pinned CPUs was this busy with other work just before "
                      "the run; above ~10% the row is noisy: rerun it on a quiet machine")
        if f["lost"]:
            notes.add("lost: events the publisher counted as rejected or unsent (e.g. its response timeout "
                      "expired while the server was busy); a server may still deliver unsent events, "
                      "which pushes completeness above 1")
        if base is not None and not c["server"].startswith("tidings") and r["result"]:
            line += (f"  {ratio(base['deliv'], f['deliv']):>9} {ratio(base['p99'], f['p99']):>8} "
                     f"{ratio(base['cpu_m'], f['cpu_m']):>8} {ratio(base['rss'], f['rss']):>8}")
        if c.get("error"):
            line += f"  ERROR: {c['error'][:120]}"
        elif not c.get("server_alive_at_end", True):
            line += "  (server died)"
        print(line)
resume_rows = [r for r in rows if r["compare"]["scenario"] == "resume"]
if resume_rows:
    print()
    print("resume after a mass drop (tidings only; the peers keep no history)")
    rh = (f"{'clients':>8} {'rate/s':>7} {'back':>6} {'recov':>6} {'not rec':>8} {'resync':>7} {'missed':>7} "
          f"{'dups':>5} {'replayed':>9} {'replay/s':>9} {'all up s':>9} {'p99 up s':>9} {'p99 own s':>9} {'srv cpu s':>9}")
    print(rh)
    print("-" * len(rh))
    for r in resume_rows:
        c, res = r["compare"], r["result"] or {}
        st, rs = res.get("storm") or {}, res.get("resume") or {}
        rp = rs.get("replies") or {}
        print(f"{c['connections']:>8} {num(c['rate'], 'g'):>7} {num(st.get('back'), 'd'):>6} "
              f"{num(rp.get('recovered'), 'd'):>6} {sum((rp.get('not_recovered') or {}).values()):>8} "
              f"{sum((rp.get('resync') or {}).values()):>7} {num(rs.get('missed'), 'd'):>7} "
              f"{num(rs.get('duplicates'), 'd'):>5} {num(rs.get('replayed'), 'd'):>9} "
              f"{num(rs.get('replayed_per_s'), '.0f'):>9} {num(rs.get('all_caught_up_s'), '.3f'):>9} "
              f"{num(rs.get('caught_up_p99_s'), '.3f'):>9} {num(rs.get('catchup_p99_s'), '.3f'):>9} "
              f"{num(res.get('server_cpu_s'), '.2f'):>9}"
              + (f"  ERROR: {c['error'][:120]}" if c.get("error") else ""))
    print("columns: back = clients subscribed again; recov / not rec = subscribed replies with recovered true / false;")
    print("  missed = published events a client never got although a later one arrived (0 while the history holds")
    print("  the gap); replay/s = replayed events received / first-to-last replayed event; all up = drop to the last")
    print("  client caught up; p99 up = 99% of clients caught up, after the drop; p99 own = each client's own reply")
    print("  to caught up; srv cpu = relay CPU from the drop until all were caught up")

print()
for n in sorted(notes):
    print("note:", n)
print("columns: pub = publisher (batch: the events due in each POST over one connection; single:K = one event")
print("  per POST over K connections); pub% = events accepted / events the offered rate had due (below 100: the")
print("  publisher could not keep the offered rate, e.g. K requests in flight at the server's answer time);")
print("  ready = subscribed sockets; deliv/s = steady-window deliveries per second; compl = received/expected;")
print("  cpu s/M = server CPU seconds per million deliveries; cores = server CPU s per wall s;")
print("  B/ev = bytes the swarm read per event received (frames with headers); RSS B/c = server RSS")
print("  growth per idle connection; lost = events not accepted by the publish endpoint;")
print("  drops = /proc/net/softnet_stat drops during the run (system-wide, connects included; see --raise-backlog);")
print("  bg% = busier pinned CPU's load from other work in the second before the run")
PY
log "raw results: $OUT"
log "server and swarm logs: $LOGS"
