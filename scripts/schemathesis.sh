#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from
# /api/v1/openapi.json of a running demo (HTTPS, with the demo's own CA) and
# fails on any 5xx answer or any answer that breaks the documented schema.
# It runs once per role (administrator, steward, analyst, service, auditor).
#
#   bash scripts/schemathesis.sh            # 30 examples per operation and role
#   ST_EXAMPLES=200 bash scripts/schemathesis.sh
#
# Installs schemathesis into $GDX_ST_VENV (default ~/.cache/gdx-schemathesis-venv)
# and builds gdx (debug) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_ST_VENV:-$HOME/.cache/gdx-schemathesis-venv}"
examples="${ST_EXAMPLES:-30}"
if [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis>=4.3,<5"
fi

cargo build -q -p gdx-exchange
gdx="$CARGO_TARGET_DIR/debug/gdx"
work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "== starting the demo on https://127.0.0.1:$port"
GDX_LOG=warn "$gdx" demo --data-dir "$work/demo" --people 2000 --listen "127.0.0.1:$port" --no-receiver \
    >"$work/demo.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
    grep -q "GDX demo is running" "$work/demo.log" && break
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$work/demo.log"
        echo "the demo stopped before it was ready" >&2
        exit 1
    fi
    sleep 0.5
done
grep -q "GDX demo is running" "$work/demo.log" || { cat "$work/demo.log"; echo "the demo did not get ready" >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/demo/demo.env"

status=0
for who in ADMIN GONGAN_STEWARD MINZHENG_ANALYST RENSHE_SERVICE ZHENGSHU_AUDITOR; do
    var="GDX_TOKEN_$who"
    echo "== schemathesis as ${who,,} ($examples examples per operation)"
    if ! "$venv/bin/st" run "$GDX_URL/api/v1/openapi.json" \
        --tls-verify "$GDX_CA_CERT" \
        --header "Authorization: Bearer ${!var}" \
        --checks not_a_server_error,response_schema_conformance \
        --max-examples "$examples" \
        --seed 2026 \
        --workers 2 \
        --no-color; then
        status=1
    fi
done
if grep -q " ERROR \| panicked" "$work/demo.log"; then
    echo "== the server logged errors:"
    grep " ERROR \| panicked" "$work/demo.log" | head -20
    status=1
fi
exit "$status"
