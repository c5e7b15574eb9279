#!/usr/bin/env bash
# Proactive pushes under load: a population register of N people (10 million
# by default), R push rules of a service of another department (100 by
# default; rule i matches the residents whose ID, as the service sees it,
# has the two digits of i at positions 15 and 16: 1/100 of them each), all
# with a webhook to
# a local receiver. Then R rounds of upserts that change the names of 1% and
# 0.1% of the people. For each: the time from the commit to every rule
# evaluated (the events in the outbox), the rows each evaluation read, and the
# deliveries per second the receiver saw; the events are checked against the
# count DuckDB finds in the change before any time is reported. The first
# evaluation of each rule reads the whole dataset; those after an upsert read
# only the change data feed.
#
#   scripts/bench-push.sh [--rows N] [--rules R] [--runs R] [--quick] [--figures FILE]
#
# Defaults: 10,000,000 people, 100 rules, 5 rounds. --quick: 200,000 people,
# 10 rules, 3 rounds. --figures appends one JSON object per figure to FILE
# (read by scripts/bench.sh). Release build; the receiver is a small
# Python HTTP server on loopback that answers 204 and counts (it shares the
# two cores with GDX and does not check signatures).
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
rules=100
runs=5
figures=
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --rules) rules="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --quick) rows=200000; rules=10; runs=3; shift ;;
        --figures) figures="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$rules" -le 100 ] || { echo "at most 100 rules" >&2; exit 2; }
[ "$runs" -le 5 ] || { echo "at most 5 rounds" >&2; exit 2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_BENCH_VENV:-$HOME/.cache/gdx-bench-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb

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
say() { echo "bench-push: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ ! -f "$work/people.parquet" ]; then
    say "generating $rows people"
    "$gdx" datagen population --rows "$rows" --seed 7 --format parquet --out "$work/people.parquet" 2>/dev/null
fi
# The changes: the first 1% and 0.1% of the people, renamed anew each round;
# and how many of the changed people the rules match (the events expected).
"$venv/bin/python" - "$work" "$rows" "$runs" "$rules" <<'PY'
import duckdb, sys
work, rows, runs, rules = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
marks = "甲乙丙丁戊己庚辛壬癸"
for r in range(runs):
    for i, (name, share) in enumerate((("change1", 100), ("change01", 1000))):
        n = max(rows // share, 1)
        mark = marks[2 * r + i]
        out = f"{work}/{name}-{r + 1}.parquet"
        duckdb.sql(f"COPY (SELECT * REPLACE (name || '{mark}' AS name) FROM '{work}/people.parquet' LIMIT {n}) "
                   f"TO '{out}' (FORMAT parquet)")
        expected = duckdb.sql(f"SELECT count(*) FROM '{out}' WHERE TRY_CAST(substr(id_number, 15, 2) AS INTEGER) < {rules}").fetchall()[0][0]
        open(f"{work}/{name}-{r + 1}.expected", "w").write(f"{expected}\n")
PY

# The receiver.
recv_port=$(free_port)
cat > "$work/receiver.py" <<'PY'
import asyncio, json, sys, time
stats = {"count": 0, "first": None, "last": None}
class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            if head[0].startswith("GET"):
                body = json.dumps(stats).encode()
                if "/reset" in head[0]:
                    stats.update(count=0, first=None, last=None)
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            else:
                now = time.time()
                stats["count"] += 1
                stats["first"] = stats["first"] or now
                stats["last"] = now
                self.t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
python3 "$work/receiver.py" "$recv_port" &
pids+=($!)

port=$(free_port)
export GDX_ADMIN_TOKEN="gdx_bench_push_$(date +%s%N)"
rm -rf "$work/data"
GDX_LOG=warn "$gdx" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --secret-key-file "$work/secret.key" \
    --webhook-allow-private true --query-timeout-secs 3600 &
pids+=($!)
server=$!
export GDX_URL="http://127.0.0.1:$port" GDX_TOKEN="$GDX_ADMIN_TOKEN"
for _ in $(seq 1 100); do curl -sf "$GDX_URL/healthz" >/dev/null && break; sleep 0.2; done

"$gdx" department add gongan --name 梅州市公安局 --region 441400 >/dev/null
"$gdx" department add renshe --name 梅州市人力资源和社会保障局 --region 441400 >/dev/null
token() { python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
steward=$("$gdx" principal add --id st --name st --department gongan --role steward --json | token)
service=$("$gdx" principal add --id sv --name sv --department renshe --role service --kind service --json | token)
"$gdx" datagen population --definition gongan > "$work/population.json"
GDX_TOKEN=$steward "$gdx" dataset register "$work/population.json" >/dev/null
say "pushing $rows people"
GDX_TOKEN=$steward "$gdx" push gongan.population "$work/people.parquet" --mode replace >/dev/null 2>&1

# The service asks for the ID numbers and names in clear; the steward approves.
request=$(GDX_TOKEN=$service "$gdx" request create gongan.population --purpose bench --columns id_number,name,county_code \
    --unmask id_number,name --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
GDX_TOKEN=$steward "$gdx" request approve "$request" >/dev/null

rss() { awk '/VmHWM/ {print $2 / 1024}' "/proc/$server/status"; }
started=$(date +%s.%N)
for i in $(seq 0 $((rules - 1))); do
    seq=$(printf '%02d' "$i")
    GDX_TOKEN=$service GDX_WEBHOOK_SECRET=whsec_YmVuY2gtcHVzaC1zZWNyZXQ= "$gdx" rule add --name "rule $seq" \
        --sql "SELECT id_number, name, county_code FROM gongan.population WHERE substr(id_number, 15, 2) = '$seq'" \
        --subject-column id_number --message '{{name}}' --on-change gongan.population \
        --webhook-url "http://127.0.0.1:$recv_port/hook" --purpose bench --no-backfill >/dev/null
done

# Waits until every rule has seen `version`; prints the seconds since `since`
# and a summary of the rules' last evaluations.
wait_rules() {
    GDX_TOKEN=$service "$venv/bin/python" - "$GDX_URL" "$1" "$2" "$rules" <<'PY'
import json, sys, time, urllib.request
url, version, since, want = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
import os
req = lambda p: json.load(urllib.request.urlopen(urllib.request.Request(url + p, headers={"authorization": "Bearer " + os.environ["GDX_TOKEN"]})))
while True:
    items = req("/api/v1/push/rules?limit=1000")["items"]
    done = [r for r in items if r["state"]["seen"].get("gongan.population") == version and r["state"]["status"] == "ok"]
    if len(done) == want:
        break
    time.sleep(0.05)
secs = time.time() - since
events = sum(r["state"]["last_events"] or 0 for r in done)
matched = sum(r["state"]["matched"] or 0 for r in done)
reads = sorted({r["state"]["read"] for r in done})
print(json.dumps({"secs": round(secs, 2), "events": events, "matched": matched, "read": reads}))
PY
}
# Waits until the receiver has `n` deliveries since the last reset; prints
# its stats.
wait_deliveries() {
    python3 - "$recv_port" "$1" <<'PY'
import json, sys, time, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 3600
while time.time() < deadline:
    s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats"))
    if s["count"] >= want:
        break
    time.sleep(0.05)
print(json.dumps(s))
PY
}

first=$(wait_rules 1 "$started")
say "first evaluation of $rules rules over $rows rows (all rows, no backfill): $first"

: >"$work/rounds.jsonl"
for round in $(seq 1 "$runs"); do
for change in change1 change01; do
    file="$work/$change-$round.parquet"
    changed=$("$venv/bin/python" -c "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM '$file'\").fetchall()[0][0])")
    before=$(date +%s.%N)
    v=$(GDX_TOKEN=$steward "$gdx" push gongan.population "$file" --mode upsert --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
    committed=$(date +%s.%N)
    result=$(wait_rules "$v" "$committed")
    events=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
    expected=$(cat "$work/$change-$round.expected")
    if [ "$events" != "$expected" ]; then
        echo "bench-push: round $round, $change: $events events, but the rules match $expected of the changed people" >&2
        exit 1
    fi
    stats=$(wait_deliveries "$events")
    curl -sf "http://127.0.0.1:$recv_port/reset" >/dev/null
    python3 - "$change" "$changed" "$before" "$committed" "$result" "$stats" "$events" "$round" \
        >>"$work/rounds.jsonl" <<'PY'
import json, sys
name, changed, before, committed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
r, s, events, round_ = json.loads(sys.argv[5]), json.loads(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
rate = s["count"] / (s["last"] - s["first"]) if s["count"] and s["last"] > s["first"] else None
print(f"bench-push: round {round_}, {name}: {changed} rows changed; upsert committed in {committed - before:.1f} s; "
      f"all rules evaluated {r['secs']:.2f} s after the commit (read: {', '.join(r['read'])}); "
      f"{events} events (as expected); {rate or 0:.0f} deliveries/s", file=sys.stderr)
print(json.dumps({"change": name, "changed": changed, "evaluated_s": r["secs"], "events": events, "deliveries_per_s": rate}))
PY
done
done
peak=$(rss)
say "server peak RSS: $peak MiB"
"$venv/bin/python" - "$work/rounds.jsonl" "$first" "$rows" "$rules" "$peak" "$figures" <<'PY'
import json, statistics, sys
rounds = [json.loads(l) for l in open(sys.argv[1])]
first, rows, rules, peak, figures = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
fig = [{"benchmark": "push", "system": "GDX", "metric": "first evaluation of every rule over all rows",
        "median": first["secs"], "min": first["secs"], "max": first["secs"], "unit": "s", "runs": 1}]
print(f"{rows:,} people, {rules} rules; {len(rounds) // 2} rounds of upserts; events checked against DuckDB's count of the matching changed people\n")
print("| change | rows changed | events | commit → all rules evaluated, s | deliveries/s |")
print("|---|---|---|---|---|")
def span(v, f):
    return f"{f.format(statistics.median(v))} ({f.format(min(v))}–{f.format(max(v))})"
for name, label in (("change1", "1%"), ("change01", "0.1%")):
    rs = [r for r in rounds if r["change"] == name]
    secs = [r["evaluated_s"] for r in rs]
    rates = [r["deliveries_per_s"] for r in rs if r["deliveries_per_s"]]
    print(f"| {label} | {rs[0]['changed']:,} | {rs[0]['events']:,} | {span(secs, '{:.2f}')} | {span(rates, '{:,.0f}') if rates else '—'} |")
    fig.append({"benchmark": f"push {label} change", "system": "GDX", "metric": "commit to all rules evaluated",
                "median": statistics.median(secs), "min": min(secs), "max": max(secs), "unit": "s", "runs": len(secs)})
    if rates:
        fig.append({"benchmark": f"push {label} change", "system": "GDX", "metric": "deliveries",
                    "median": statistics.median(rates), "min": min(rates), "max": max(rates), "unit": "deliveries/s", "runs": len(rates)})
print(f"\nFirst evaluation of the {rules} rules over all rows: {first['secs']:.1f} s; server peak RSS {peak:.0f} MB")
fig.append({"benchmark": "push", "system": "GDX", "metric": "peak RSS", "median": peak, "min": peak, "max": peak, "unit": "MB", "runs": 1})
if figures:
    with open(figures, "a", encoding="utf-8") as f:
        for o in fig:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
PY
