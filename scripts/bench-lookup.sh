#!/usr/bin/env bash
# Record lookups under load: a generated population register (10 million
# people by default) with masks and a row filter, looked up by a service of
# another department (the ID unmasked by a grant) through
# GET /api/v1/datasets/gongan.population/records/{key}, from 32 connections on
# loopback for 60 s (wrk), governance and audit on: 90% of the keys present,
# 10% absent. Then, on the same data in the same run: DuckDB answering the
# same keys from a table with a primary-key index (32 threads in one process),
# and ROAPI (PyPI `roapi`) serving the same Parquet over HTTP, under the same
# wrk load. Prints p50, p99, lookups per second and peak RSS of each.
#
#   scripts/bench-lookup.sh [--rows N] [--secs S] [--quick]
#
# --quick: 200,000 people, 10 s per run. Needs wrk (apt-get install wrk);
# installs duckdb and roapi into a virtual environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
secs=60
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --secs) secs="$2"; shift 2 ;;
        --quick) rows=200000; secs=10; shift ;;
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
        if random.random() < 0.02:
            present.append(line.split(",", 1)[0])
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
GDX_ADMIN_TOKEN="$admin" GDX_LOG_FORMAT=json RUST_LOG=warn "$gdx" serve --data-dir "$work/data" \
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

cat >"$work/lookup.lua" <<LUA
local keys = {}
for line in io.lines("$work/keys.txt") do keys[#keys + 1] = line end
local prefix = os.getenv("PATH_PREFIX")
local auth = os.getenv("AUTH")
local suffix = os.getenv("PATH_SUFFIX") or ""
math.randomseed(os.time())
request = function()
  local k = keys[math.random(#keys)]
  local headers = {}
  if auth and auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
  return wrk.format("GET", prefix .. k .. suffix, headers)
end
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
say "GDX: $secs s"
gdx_out=$(PATH_PREFIX="/api/v1/datasets/gongan.population/records/" AUTH="$service" \
    wrk -t2 -c32 -d"${secs}s" --timeout 10s -s "$work/lookup.lua" "$GDX_URL" | grep RESULT)
gdx_rss=$(peak "$server")
# One check that the answers are right: a present key in the filter, in clear.
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
say "ROAPI: $secs s"
roapi_out=$(PATH_PREFIX="/api/tables/people?filter%5Bid_number%5Deq=" AUTH="" \
    wrk -t2 -c32 -d"${secs}s" --timeout 10s -s "$work/lookup.lua" "http://127.0.0.1:$rport" | grep RESULT || true)
roapi_rss=$(peak "$roapi")
kill "$roapi"; wait "$roapi" 2>/dev/null || true

# DuckDB: the same keys, a PRIMARY KEY index, 32 threads of one process.
say "DuckDB: $secs s"
duck_out=$("$venv/bin/python" - "$work/people.csv" "$work/keys.txt" "$secs" <<'PY'
import duckdb, random, resource, sys, threading, time
con = duckdb.connect()
con.execute("PRAGMA threads=2")
con.execute("CREATE TABLE people AS SELECT * FROM read_csv(?, header=true, all_varchar=true)", [sys.argv[1]])
con.execute("CREATE UNIQUE INDEX people_pk ON people(id_number)")
keys = open(sys.argv[2]).read().split()
secs = float(sys.argv[3])
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
print(f"RESULT p50_ms={lat[len(lat)//2]*1000:.3f} p99_ms={lat[int(len(lat)*0.99)]*1000:.3f} rps={len(lat)/elapsed:.0f} errors=0 rss_mb={rss}")
PY
)

field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
echo
echo "lookups of $(wc -l <"$work/keys.txt") keys (90% present, 10% absent) over $rows people, ${secs} s, 32 connections"
echo
echo "| | p50 ms | p99 ms | lookups/s | errors | peak RSS MB |"
echo "|---|---|---|---|---|---|"
echo "| GDX (HTTP, governed, audited) | $(field "$gdx_out" p50_ms) | $(field "$gdx_out" p99_ms) | $(field "$gdx_out" rps) | $(field "$gdx_out" errors) | $gdx_rss |"
echo "| ROAPI (HTTP, Parquet, no index) | $(field "$roapi_out" p50_ms) | $(field "$roapi_out" p99_ms) | $(field "$roapi_out" rps) | $(field "$roapi_out" errors) | $roapi_rss |"
echo "| DuckDB (in process, PK index) | $(field "$duck_out" p50_ms) | $(field "$duck_out" p99_ms) | $(field "$duck_out" rps) | 0 | $(field "$duck_out" rss_mb) |"
echo
echo "a GDX answer: $(head -c 300 "$work/sample.json")"
