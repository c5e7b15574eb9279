#!/usr/bin/env bash
# Peak memory of the server for an upsert: a table of BASE rows, then an
# upsert of BASE matching rows plus UPSERT-BASE... new rows (see docs/performance.md).
#   scripts/bench-upsert-memory.sh BASE NEW
# Needs a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:?rows in the table}"
new="${2:?new rows in the upsert}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
gdx="$CARGO_TARGET_DIR/release/gdx"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$gdx" datagen population --rows "$base" --seed 11 --out "$work/base.csv" 2>/dev/null
"$gdx" datagen population --rows "$new" --seed 12 --out "$work/new.csv" 2>/dev/null
cp "$work/base.csv" "$work/upsert.csv"
tail -n +2 "$work/new.csv" >> "$work/upsert.csv"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export GDX_ADMIN_TOKEN="gdx_upsert_admin_$(date +%s%N)"
GDX_LOG=warn "$gdx" serve --data-dir "$work/d" --listen "127.0.0.1:$port" --secret-key-file "$work/s.key" --maintenance-interval-hours 0 &
server=$!
export GDX_URL="http://127.0.0.1:$port" GDX_TOKEN="$GDX_ADMIN_TOKEN"
for _ in $(seq 1 100); do curl -sf "$GDX_URL/healthz" >/dev/null && break; sleep 0.1; done
"$gdx" department add gongan --name 梅州市公安局 >/dev/null
steward=$("$gdx" principal add --name s --department gongan --role steward --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$gdx" datagen population --definition gongan > "$work/pop.json"
GDX_TOKEN="$steward" "$gdx" dataset register "$work/pop.json" >/dev/null
GDX_TOKEN="$steward" "$gdx" push gongan.population "$work/base.csv" 2>/dev/null
echo "after the base push: $(grep VmHWM "/proc/$server/status")"
GDX_TOKEN="$steward" "$gdx" push gongan.population "$work/upsert.csv" --mode upsert || true
echo "after the upsert: $(grep VmHWM "/proc/$server/status")"
