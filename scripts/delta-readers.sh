#!/usr/bin/env bash
# Checks that other Delta Lake readers (the Python `deltalake` package and
# Polars) open the tables GDX writes, at the latest version and by time travel.
# Builds gdx (debug), runs a server on loopback with a temporary data
# directory, pushes synthetic data through the CLI, then reads the lake.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_VENV:-$HOME/.cache/gdx-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import deltalake, polars' 2>/dev/null || "$venv/bin/pip" install -q deltalake polars

cargo build -q -p gdx-exchange
gdx="$CARGO_TARGET_DIR/debug/gdx"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export GDX_ADMIN_TOKEN="gdx_delta_readers_$(date +%s%N)"
GDX_LOG=warn "$gdx" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --secret-key-file "$work/secret.key" &
server=$!
export GDX_URL="http://127.0.0.1:$port" GDX_TOKEN="$GDX_ADMIN_TOKEN"
for _ in $(seq 1 50); do curl -sf "$GDX_URL/healthz" >/dev/null && break; sleep 0.2; done

"$gdx" department add gongan --name 梅州市公安局 --region 441400 >/dev/null
steward=$("$gdx" principal add --name steward --department gongan --role steward --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export GDX_TOKEN="$steward"
"$gdx" dataset register docs/examples/population.toml >/dev/null
"$gdx" datagen population --rows 5000 --seed 1 --out "$work/a.csv" 2>/dev/null
"$gdx" datagen population --rows 7000 --seed 2 --out "$work/b.parquet" --format parquet 2>/dev/null
# The example entry has fewer columns than datagen writes: keep those it has.
python3 - "$work/a.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
keep = ["id_number", "name", "birth_date", "county_code"]
with open(sys.argv[1], "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, keep); w.writeheader()
    for r in rows: w.writerow({k: r[k] for k in keep})
PY
"$gdx" push gongan.population "$work/a.csv" 2>/dev/null
"$venv/bin/python" - "$work/b.parquet" "$work/b2.parquet" <<'PY'
import sys, polars as pl
pl.read_parquet(sys.argv[1]).select(["id_number", "name", "birth_date", "county_code"]).write_parquet(sys.argv[2])
PY
"$gdx" push gongan.population "$work/b2.parquet" --mode upsert 2>/dev/null

"$venv/bin/python" - "$work/data/lake/gongan/population" <<'PY'
import sys
from deltalake import DeltaTable
import polars as pl
path = sys.argv[1]
t = DeltaTable(path)
assert t.version() == 1, t.version()
latest = pl.read_delta(path)
first = pl.read_delta(path, version=0)
assert first.height == 5000, first.height
assert latest.height == 12000, latest.height
assert latest["id_number"].n_unique() == 12000
info = t.history()[0]["gdx.push"]
assert info["version"] == 2 and info["mode"] == "upsert", info
# The change data feed: the upsert's 7000 new keys are inserts.
feed = pl.DataFrame(t.load_cdf(starting_version=1, ending_version=1).read_all())
kinds = dict(feed.group_by("_change_type").len().iter_rows())
assert kinds == {"insert": 7000}, kinds
print(f"delta-readers: deltalake and polars read {latest.height} rows at version {t.version()} and {first.height} by time travel; the change feed of the upsert: {kinds}")
PY
