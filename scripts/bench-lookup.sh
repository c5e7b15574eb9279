#!/usr/bin/env bash
# Record lookups under load: a generated population register (10 million
# people by default) with masks and a row filter, looked up by a service of
# another department (the ID unmasked by a grant) through
# GET /api/v1/datasets/gongan.population/records/{key}, from 32 connections on
# loopback for 60 s (wrk), governance and audit on: 90% of the keys present,
# 10% absent (none ending in the check character X, which ROAPI cannot
# find). Then, on the same data in the same run: DuckDB answering the
# same keys from a table with a primary-key index (32 threads in one process),
# and ROAPI (PyPI `roapi`) serving the same Parquet over HTTP, under the same
# wrk load. Before any time is reported, the three are checked to find the
# same keys (GDX within its row filter). Prints the median of R runs (with
# min–max) of p50, p99, lookups per second, and peak RSS of each.
#
#   scripts/bench-lookup.sh [--rows N] [--secs S] [--runs R] [--quick] [--figures FILE]
#
# With GDX_BENCH_DIR=DIR the data, the lake and the service's token are kept
# in DIR, for scripts/bench-lookup-ab.sh.
#
# Defaults: 10,000,000 people, 5 runs of 60 s. --quick: 200,000 people, 3
# runs of 5 s. --figures appends one JSON object per figure to FILE (read by
# scripts/bench.sh). Needs wrk (apt-get install wrk); installs duckdb and
# roapi into a virtual environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
secs=60
runs=5
figures=
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --secs) secs="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --quick) rows=200000; secs=5; runs=3; shift ;;
        --figures) figures="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_BENCH_VENV:-$HOME/.cache/gdx-bench-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb
[ -x "$venv/bin/roapi" ] || "$venv/bin/pip" install -q roapi

work="${GDX_BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${GDX_BENCH_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release -p gdx-exchange --bin gdx
gdx="$CARGO_TARGET_DIR/release/gdx"
say() { echo "bench-lookup: $*" >&2; }

# The data: a CSV for GDX and DuckDB, and the keys (90% present, 10% absent).
if [ ! -f "$work/people.csv" ]; then
    say "generating $rows people"
    "$gdx" datagen population --rows "$rows" --seed 7 --out "$work/people.csv"
fi
python3 - "$work/people.csv" "$work/keys.txt" <<'PY'
import random, sys
random.seed(7)
present = []
with open(sys.argv[1], encoding="utf-8") as f:
    next(f)
    for i, line in enumerate(f):
        key = line.split(",", 1)[0]
        # ROAPI 0.12.7 finds no row whose key ends in the check character X
        # (it answers []): such keys are left out for every system alike.
        if random.random() < 0.02 and not key.endswith("X"):
            present.append(key)
keys = random.sample(present, min(len(present), 90000))
# Absent: well-formed numbers of people born in a year nobody in the register was.
absent = [k[:6] + "2031" + k[10:] for k in random.sample(present, len(keys) // 9)]
keys += absent
random.shuffle(keys)
open(sys.argv[2], "w").write("\n".join(keys) + "\n")
print(f"bench-lookup: {len(keys)} keys, {len(absent)} absent", file=sys.stderr)
PY

# GDX: a server, two departments, the register pushed, a policy, a grant.
port=$((20000 + RANDOM % 20000))
export GDX_URL="http://127.0.0.1:$port"
admin="gdx_bench_lookup_admin_token_0123456789"
rm -rf "$work/data" "$work/gdx-secret.key"
# The server logs as deployed (GDX_LOG unset: info, JSON). At info it opens
# no span per request (the per-request span is at debug level; it cost 3-5%
# of a lookup's instructions, docs/performance.md).
GDX_ADMIN_TOKEN="$admin" GDX_LOG_FORMAT=json "$gdx" serve --data-dir "$work/data" \
    --listen "127.0.0.1:$port" --secret-key-file "$work/gdx-secret.key" 2>"$work/server.log" &
server=$!
pids+=("$server")
for _ in $(seq 100); do curl -sf "$GDX_URL/healthz" >/dev/null && break; sleep 0.1; done
token() { jq -r .token; }
export GDX_TOKEN="$admin"
"$gdx" department add gongan --name 梅州市公安局 --region 441400 >/dev/null
"$gdx" department add renshe --name 梅州市人社局 --region 441400 >/dev/null
steward=$("$gdx" principal add --name 公安数据管理员 --department gongan --role steward --json | token)
service=$("$gdx" principal add --name 社保待遇系统 --department renshe --role service --json | token)
# Kept with the data (GDX_BENCH_DIR) for scripts/bench-lookup-ab.sh.
(umask 077 && printf '%s\n' "$service" >"$work/service.token")
GDX_TOKEN="$steward" "$gdx" datagen population --definition gongan >"$work/def.json"
GDX_TOKEN="$steward" "$gdx" dataset register "$work/def.json" >/dev/null
say "pushing $rows rows"
start=$(date +%s.%N)
GDX_TOKEN="$steward" "$gdx" push gongan.population "$work/people.csv" >/dev/null 2>&1
say "pushed in $(echo "$(date +%s.%N) - $start" | bc) s (the record index is built beside the answer)"
cat >"$work/policy.json" <<'JSON'
{"masks": [{"column": "phone", "mask": "phone"}],
 "row_filters": [{"for": "renshe", "filter": "county_code <> '441427'"}]}
JSON
curl -sf -X PUT -H "Authorization: Bearer $steward" -H 'Content-Type: application/json' \
    --data @"$work/policy.json" "$GDX_URL/api/v1/datasets/gongan.population/policy" >/dev/null
request=$(GDX_TOKEN="$service" "$gdx" request create gongan.population --purpose 待遇资格核验 --unmask id_number --json | jq -r .id)
GDX_TOKEN="$steward" "$gdx" request approve "$request" >/dev/null

# The load (scripts/lookup-load.lua) and what a run reports.
cat >"$work/lookup.lua" <<LUA
keys_file = "$work/keys.txt"
dofile("$PWD/scripts/lookup-load.lua")
done = function(summary, latency, requests)
  local codes = 0
  io.write(string.format("RESULT p50_ms=%.3f p99_ms=%.3f rps=%.0f errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1e6),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
peak() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# The first lookup waits for the record index of the push; then a warm-up and the measured run.
start=$(date +%s.%N)
curl -s -o /dev/null -H "Authorization: Bearer $service" \
    "$GDX_URL/api/v1/datasets/gongan.population/records/$(head -1 "$work/keys.txt")"
say "record index ready $(echo "$(date +%s.%N) - $start" | bc) s after the push answered"
PATH_PREFIX="/api/v1/datasets/gongan.population/records/" AUTH="$service" \
    wrk -t2 -c32 -d3s -s "$work/lookup.lua" "$GDX_URL" >/dev/null
# The answers, before any time: how many of the first 200 keys GDX finds
# (within its row filter), checked against DuckDB below.
"$venv/bin/python" - "$GDX_URL/api/v1/datasets/gongan.population/records/" "$service" "$work/keys.txt" \
    >"$work/found-gdx.txt" <<'PY'
import http.client, sys, urllib.parse
url, token, keys = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().split()[:200]
u = urllib.parse.urlsplit(url)
c = http.client.HTTPConnection(u.hostname, u.port)
found = 0
for k in keys:
    c.request("GET", u.path + k, headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    r.read()
    if r.status == 200:
        found += 1
    elif r.status != 404:
        sys.exit(f"bench-lookup: GDX answered {r.status}")
print(found)
PY
: >"$work/gdx.txt"
for r in $(seq 1 "$runs"); do
    say "GDX: run $r/$runs, $secs s"
    PATH_PREFIX="/api/v1/datasets/gongan.population/records/" AUTH="$service" \
        wrk -t2 -c32 -d"${secs}s" --timeout 10s -s "$work/lookup.lua" "$GDX_URL" | grep RESULT >>"$work/gdx.txt"
done
gdx_rss=$(peak "$server")
# A sample answer: a present key in the filter, in clear.
k=$(head -1 "$work/keys.txt")
curl -s -H "Authorization: Bearer $service" "$GDX_URL/api/v1/datasets/gongan.population/records/$k" >"$work/sample.json"
kill "$server"; wait "$server" 2>/dev/null || true

# ROAPI over the same data as Parquet (the lake's files), the same wrk load.
mkdir -p "$work/roapi"
"$venv/bin/python" - "$work/data/lake/gongan/population" "$work/roapi/people.parquet" <<'PY'
import duckdb, glob, sys
files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
duckdb.sql(f"COPY (SELECT * FROM read_parquet({files})) TO '{sys.argv[2]}' (FORMAT parquet)")
PY
rport=$((port + 1))
"$venv/bin/roapi" -a "127.0.0.1:$rport" -t "people=$work/roapi/people.parquet" >"$work/roapi.log" 2>&1 &
roapi=$!
pids+=("$roapi")
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$rport/api/schema" >/dev/null && break; sleep 0.1; done
"$venv/bin/python" - "http://127.0.0.1:$rport/api/tables/people?filter%5Bid_number%5Deq=" "$work/keys.txt" \
    >"$work/found-roapi.txt" <<'PY'
import http.client, json, sys, urllib.parse
url, keys = sys.argv[1], open(sys.argv[2]).read().split()[:200]
u = urllib.parse.urlsplit(url)
c = http.client.HTTPConnection(u.hostname, u.port)
found = 0
for k in keys:
    c.request("GET", u.path + "?" + u.query + k)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"bench-lookup: ROAPI answered {r.status}")
    found += len(json.loads(body))
print(found)
PY
: >"$work/roapi.txt"
for r in $(seq 1 "$runs"); do
    say "ROAPI: run $r/$runs, $secs s"
    PATH_PREFIX="/api/tables/people?filter%5Bid_number%5Deq=" AUTH="" \
        wrk -t2 -c32 -d"${secs}s" --timeout 10s -s "$work/lookup.lua" "http://127.0.0.1:$rport" | grep RESULT >>"$work/roapi.txt" || true
done
roapi_rss=$(peak "$roapi")
kill "$roapi"; wait "$roapi" 2>/dev/null || true

# DuckDB: the same keys, a PRIMARY KEY index, 32 threads of one process.
say "DuckDB: $runs runs of $secs s"
"$venv/bin/python" - "$work/people.csv" "$work/keys.txt" "$secs" "$runs" "$work" <<'PY' >"$work/duckdb.txt"
import duckdb, random, resource, sys, threading, time
con = duckdb.connect()
con.execute("PRAGMA threads=2")
con.execute("CREATE TABLE people AS SELECT * FROM read_csv(?, header=true, all_varchar=true)", [sys.argv[1]])
con.execute("CREATE UNIQUE INDEX people_pk ON people(id_number)")
keys = open(sys.argv[2]).read().split()
secs, runs, work = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# What GDX and ROAPI must have found among the first 200 keys.
sample = keys[:200]
con.execute("CREATE TABLE sample AS SELECT unnest(?) AS id_number", [sample])
present, filtered = con.execute("SELECT count(*), count(*) FILTER (WHERE county_code <> '441427') "
                                "FROM people JOIN sample USING (id_number)").fetchone()
open(f"{work}/found-duckdb.txt", "w").write(f"{present} {filtered}\n")
for _ in range(runs):
    lat = []
    lock = threading.Lock()
    stop = time.monotonic() + secs
    def worker():
        c = con.cursor()
        mine = []
        r = random.Random()
        while time.monotonic() < stop:
            k = keys[r.randrange(len(keys))]
            t = time.perf_counter()
            c.execute("SELECT * FROM people WHERE id_number = ?", [k]).fetchall()
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)
    threads = [threading.Thread(target=worker) for _ in range(32)]
    start = time.monotonic()
    for t in threads: t.start()
    for t in threads: t.join()
    elapsed = time.monotonic() - start
    lat.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"RESULT p50_ms={lat[len(lat)//2]*1000:.3f} p99_ms={lat[int(len(lat)*0.99)]*1000:.3f} rps={len(lat)/elapsed:.0f} errors=0 rss_mb={rss}", flush=True)
PY

# The answers first: GDX finds the keys DuckDB has within the row filter,
# ROAPI (no filter) all DuckDB has.
read -r duck_present duck_filtered <"$work/found-duckdb.txt"
gdx_found=$(cat "$work/found-gdx.txt")
roapi_found=$(cat "$work/found-roapi.txt")
if [ "$gdx_found" != "$duck_filtered" ] || [ "$roapi_found" != "$duck_present" ]; then
    echo "bench-lookup: the systems disagree on the first 200 keys: GDX found $gdx_found (DuckDB within the filter: $duck_filtered), ROAPI $roapi_found (DuckDB: $duck_present)" >&2
    exit 1
fi

"$venv/bin/python" - "$work" "$rows" "$secs" "$runs" "$gdx_rss" "$roapi_rss" "$figures" "$(wc -l <"$work/keys.txt")" \
    "$gdx_found" "$duck_present" <<'PY'
import json, statistics, sys
work, rows, secs, runs, gdx_rss, roapi_rss, figures, nkeys, found, present = sys.argv[1:11]
def parse(path):
    out = []
    for line in open(path):
        if line.startswith("RESULT"):
            out.append({k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])})
    return out
systems = [("GDX", "GDX (HTTP, governed, audited)", parse(f"{work}/gdx.txt"), gdx_rss),
           ("ROAPI", "ROAPI (HTTP, Parquet, no index)", parse(f"{work}/roapi.txt"), roapi_rss),
           ("DuckDB", "DuckDB (in process, PK index)", parse(f"{work}/duckdb.txt"), None)]
print(f"lookups of {nkeys} keys (90% present, 10% absent) over {int(rows):,} people, {runs} runs of {secs} s, 32 connections;")
print(f"checked first: of the first 200 keys GDX finds {found} (the rows within its filter, as DuckDB counts them), ROAPI and DuckDB {present}")
print()
print("| | p50 ms | p99 ms | lookups/s | errors | peak RSS MB |")
print("|---|---|---|---|---|---|")
fig = []
def span(v, fmt):
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
for system, label, res, rss in systems:
    if not res:
        print(f"| {label} | — | — | — | no answer | — |")
        continue
    p50, p99, rps = [r["p50_ms"] for r in res], [r["p99_ms"] for r in res], [r["rps"] for r in res]
    errors = sum(int(r["errors"]) for r in res)
    rss = float(rss) if rss else max(r.get("rss_mb", 0) for r in res)
    print(f"| {label} | {span(p50, '{:.2f}')} | {span(p99, '{:.2f}')} | {span(rps, '{:,.0f}')} | {errors} | {rss:,.0f} |")
    for metric, values, unit in (("p50", p50, "ms"), ("p99", p99, "ms"), ("throughput", rps, "lookups/s")):
        fig.append({"benchmark": "lookup", "system": system, "metric": metric, "median": statistics.median(values),
                    "min": min(values), "max": max(values), "unit": unit, "runs": len(values)})
    fig.append({"benchmark": "lookup", "system": system, "metric": "peak RSS", "median": rss, "min": rss, "max": rss,
                "unit": "MB", "runs": 1})
if figures:
    with open(figures, "a", encoding="utf-8") as f:
        for o in fig:
            f.write(json.dumps(o) + "\n")
PY
echo
echo "a GDX answer: $(head -c 300 "$work/sample.json")"
