#!/usr/bin/env bash
# Proactive pushes under load: a population register of N people (10 million
# by default), R push rules of a service of another department (100 by
# default; rule i matches the residents whose ID, as the service sees it,
# has the two digits of i at positions 15 and 16: 1/100 of them each), all
# with a webhook to
# a local receiver. Then upserts that change the names of 1% and 0.1% of the
# people. For each: the time from the commit to every rule evaluated (the
# events in the outbox), the rows each evaluation read, and the deliveries
# per second the receiver saw. The first evaluation of each rule reads the
# whole dataset; those after an upsert read only the change data feed.
#
#   scripts/bench-push.sh [--rows N] [--rules R] [--quick]
#
# --quick: 200,000 people, 10 rules. Release build; the receiver is a small
# Python HTTP server on loopback that answers 204 and counts (it shares the
# two cores with GDX and does not check signatures).
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
rules=100
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --rules) rules="$2"; shift 2 ;;
        --quick) rows=200000; rules=10; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$rules" -le 100 ] || { echo "at most 100 rules" >&2; exit 2; }

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
# The changes: the first 1% and 0.1% of the people, renamed.
"$venv/bin/python" - "$work" "$rows" <<'PY'
import duckdb, sys
work, rows = sys.argv[1], int(sys.argv[2])
for name, share, mark in (("change1", 100, "甲"), ("change01", 1000, "乙")):
    n = max(rows // share, 1)
    duckdb.sql(f"COPY (SELECT * REPLACE (name || '{mark}' AS name) FROM '{work}/people.parquet' LIMIT {n}) "
               f"TO '{work}/{name}.parquet' (FORMAT parquet)")
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

for change in change1 change01; do
    changed=$("$venv/bin/python" -c "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM '$work/$change.parquet'\").fetchall()[0][0])")
    before=$(date +%s.%N)
    v=$(GDX_TOKEN=$steward "$gdx" push gongan.population "$work/$change.parquet" --mode upsert --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
    committed=$(date +%s.%N)
    result=$(wait_rules "$v" "$committed")
    events=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
    stats=$(wait_deliveries "$events")
    curl -sf "http://127.0.0.1:$recv_port/reset" >/dev/null
    python3 - "$change" "$changed" "$before" "$committed" "$result" "$stats" "$events" <<'PY'
import json, sys
name, changed, before, committed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
r, s, events = json.loads(sys.argv[5]), json.loads(sys.argv[6]), int(sys.argv[7])
print(f"bench-push: {name}: {changed} rows changed; upsert committed in {committed - before:.1f} s; "
      f"all rules evaluated {r['secs']:.2f} s after the commit (read: {', '.join(r['read'])}); "
      f"{events} events", file=sys.stderr)
PY
    # Deliveries per second over this change's events, at the receiver.
    echo "$stats" > "$work/stats-$change.json"
done
python3 - "$work" <<'PY'
import json, sys
for name, label in (("change1", "1%"), ("change01", "0.1%")):
    a = json.load(open(f"{sys.argv[1]}/stats-{name}.json"))
    if a["count"] and a["last"] > a["first"]:
        print(f"bench-push: receiver: {a['count']} deliveries after the {label} change, "
              f"{a['count'] / (a['last'] - a['first']):.0f} per second from the first to the last", file=sys.stderr)
PY
say "server peak RSS: $(rss) MiB"
