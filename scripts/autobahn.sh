#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against examples/echo.rs, which
# is built from the relay's own reactor and WebSocket code.
#
#   scripts/autobahn.sh                sections 1-10 (about 300 cases, under a minute)
#   scripts/autobahn.sh --compression  sections 12 and 13: permessage-deflate
#   scripts/autobahn.sh --all          every case, compression included (about 11 minutes)
#
# Installs the suite into target/autobahn-venv on first use. The suite is
# Python 2 only: it needs a CPython 2.7 (found via pyenv, or AUTOBAHN_PYTHON2)
# and a virtualenv older than 20.22, the last to create Python 2 environments.
# Exits non-zero if any case ends other than OK, NON-STRICT or INFORMATIONAL
# (UNIMPLEMENTED is accepted for the compression sections 12 and 13: the
# offers the relay declines, docs/security.md).
set -euo pipefail
cd "$(dirname "$0")/.."

cases='["1.*","2.*","3.*","4.*","5.*","6.*","7.*","8.*","9.*","10.*"]'
case "${1:-}" in
    --all) cases='["*"]' ;;
    --compression) cases='["12.*","13.*"]' ;;
    "") ;;
    *) echo "usage: $0 [--compression | --all]" >&2; exit 2 ;;
esac
# AUTOBAHN_CASES overrides the list, e.g. '["12.1.*","13.1.*"]' for a quick
# look at the compression sections.
cases="${AUTOBAHN_CASES:-$cases}"
port="${AUTOBAHN_PORT:-9001}"
venv="target/autobahn-venv"
reports="target/autobahn-reports"

find_python2() {
    if [[ -n "${AUTOBAHN_PYTHON2:-}" ]]; then
        echo "$AUTOBAHN_PYTHON2"
        return
    fi
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    # The pyenv shim refuses Python 2; call the interpreter itself.
    for candidate in "$root"/versions/2.7*/bin/python2.7 /usr/bin/python2.7; do
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return
        fi
    done
    echo "no CPython 2.7 found; set AUTOBAHN_PYTHON2" >&2
    exit 1
}

if [[ ! -x "$venv/bin/wstest" ]]; then
    echo "== installing autobahntestsuite into $venv"
    python3 -m pip install --quiet 'virtualenv<20.22'
    python3 -m virtualenv --quiet -p "$(find_python2)" "$venv"
    "$venv/bin/pip" install --quiet autobahntestsuite==25.10.1
fi

echo "== building the echo server"
cargo build --release --quiet --example echo
TIDINGS_LOG=warn target/release/examples/echo "127.0.0.1:$port" > /dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

rm -rf "$reports"
mkdir -p "$reports"
cat > "$reports/fuzzingclient.json" <<JSON
{
  "outdir": "$PWD/$reports",
  "servers": [{"agent": "tidings", "url": "ws://127.0.0.1:$port/ws"}],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
echo "== running the suite"
(cd "$reports" && "../../$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json > wstest.log 2>&1)

python3 - "$reports/index.json" <<'PY'
import collections, json, sys
index = json.load(open(sys.argv[1]))
results = index["tidings"]
counts = collections.Counter()
bad = []
for case, result in sorted(results.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
    behavior = result["behavior"]
    close = result["behaviorClose"]
    counts[behavior] += 1
    section = int(case.split(".")[0])
    ok = behavior in ("OK", "NON-STRICT", "INFORMATIONAL") or (
        behavior == "UNIMPLEMENTED" and section in (12, 13))
    if not ok or close not in ("OK", "INFORMATIONAL"):
        bad.append((case, behavior, close))
print("cases:", len(results), dict(sorted(counts.items())))
for case, behavior, close in bad:
    print(f"  FAILED {case}: behavior {behavior}, close {close}")
sys.exit(1 if bad else 0)
PY
