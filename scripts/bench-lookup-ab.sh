#!/usr/bin/env bash
# Paired lookup runs of two gdx builds, on the data a kept run of
# scripts/bench-lookup.sh left behind (GDX_BENCH_DIR=DIR): the builds take
# turns; each server starts on an empty audit log and is warmed up for 5 s,
# then RUNS consecutive wrk runs of SECS s follow (the log grows across them,
# as in the benchmark's five runs: the audit's cost grows with it). Load as in
# the benchmark: 32 connections, 2 wrk threads, the same keys and service.
# Prints one line per run: the build, the run, lookups/s and percentiles.
#
#   scripts/bench-lookup-ab.sh DIR GDX_A GDX_B [--secs S] [--runs N] [--rounds R]
#
# DIR comes from `GDX_BENCH_DIR=DIR scripts/bench-lookup.sh [--quick]`.
# Defaults: 3 runs of 20 s, 2 rounds. Short runs do not show everything: a
# change that looks better here can still lose in the benchmark's five runs
# of 60 s (docs/performance.md has one). Deletes DIR's audit log.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
dir="$1"; a="$2"; b="$3"; shift 3
secs=20; runs=3; rounds=2
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) secs="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
for f in data keys.txt service.token gdx-secret.key; do
    [ -e "$dir/$f" ] || { echo "bench-lookup-ab: $dir/$f is missing: run GDX_BENCH_DIR=$dir scripts/bench-lookup.sh first" >&2; exit 2; }
done
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "bench-lookup-ab: $bin is not an executable" >&2; exit 2; }; done

tmp=$(mktemp -d)
server=
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
# The load of the benchmark (scripts/lookup-load.lua), with its service.
root=$(cd "$(dirname "$0")/.." && pwd)
AUTH=$(cat "$dir/service.token")
export AUTH PATH_PREFIX="/api/v1/datasets/gongan.population/records/"
cat >"$tmp/lookup.lua" <<LUA
keys_file = "$dir/keys.txt"
dofile("$root/scripts/lookup-load.lua")
done = function(summary, latency, requests)
  local s = ""
  for _, p in ipairs({50, 90, 99, 99.9}) do s = s .. string.format(" p%s=%.2fms", p, latency:percentile(p) / 1000) end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f/s%s max=%.1fms errors=%d\n",
    summary.requests / (summary.duration / 1e6), s, latency.max / 1000, errors))
end
LUA

port=$((20000 + RANDOM % 20000))
url="http://127.0.0.1:$port"
for round in $(seq "$rounds"); do
    for bin in "$a" "$b"; do
        rm -f "$dir/data/audit.db" "$dir/data/audit.db-"* "$dir/data/audit-subjects.db"*
        GDX_LOG=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
            --secret-key-file "$dir/gdx-secret.key" 2>"$tmp/server.log" &
        server=$!
        for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
        curl -sf "$url/healthz" >/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
        wrk -t2 -c32 -d5s --timeout 10s -s "$tmp/lookup.lua" "$url" >/dev/null
        for r in $(seq "$runs"); do
            line=$(wrk -t2 -c32 -d"${secs}s" --timeout 10s -s "$tmp/lookup.lua" "$url" | grep RESULT)
            echo "round $round $(basename "$bin") run $r: ${line#RESULT }"
        done
        kill "$server"; wait "$server" 2>/dev/null || true
        server=
    done
done
