#!/usr/bin/env bash
# Every benchmark, side by side with the peers, in one run: generates the data
# with `gdx datagen`, runs each benchmark against GDX and, on the same files,
# against DuckDB and plain DataFusion (and ROAPI for lookups), checks that
# their answers agree before any time is reported, and writes
# docs/benchmarks.md and docs/benchmarks.json (machine, versions, command,
# medians with min–max, ratios, peak RSS, and each figure's goal and whether
# it is met).
#
#   scripts/bench.sh [--quick] [--only ingest,query,lookup,decisions,push] [--out DIR]
#
#   ingest     CSV (about 1 GB) and NDJSON → committed version; MB/s, peak RSS
#   query      ~10 governed queries vs DataFusion and DuckDB by hand, hot and cold
#   lookup     record lookups at 32 connections vs DuckDB (PK index) and ROAPI
#   decisions  casbin decisions per second, 1k/10k/100k rules, 100 departments
#   push       commit-to-event latency and deliveries per second
#
# The default sizes are those the goals name (10 million people; about an
# hour and a half on two cores). --quick runs everything small (200,000
# people, 3 runs) in a few minutes and writes its report to a temporary
# directory unless --out says where; a full run writes to docs/.
#
# Needs a Rust toolchain, python3 (with venv) and wrk (installed with apt-get
# when missing and possible). Builds GDX in release (20 minutes or more from
# nothing); installs duckdb, datafusion, polars, deltalake, pyarrow and roapi
# into a virtual environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=
only=ingest,query,lookup,decisions,push
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=--quick; shift ;;
        --only) only="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for b in ${only//,/ }; do
    case "$b" in
        ingest|query|lookup|decisions|push) ;;
        *) echo "bench: unknown benchmark $b (ingest, query, lookup, decisions, push)" >&2; exit 2 ;;
    esac
done
command="scripts/bench.sh${quick:+ $quick}$([ "$only" = ingest,query,lookup,decisions,push ] || echo " --only $only")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
export GDX_BENCH_VENV="${GDX_BENCH_VENV:-$HOME/.cache/gdx-bench-venv}"
venv="$GDX_BENCH_VENV"
say() { echo "bench: $*" >&2; }

# What the benchmarks need, installed once.
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb, datafusion, polars, deltalake, pyarrow' 2>/dev/null \
    || "$venv/bin/pip" install -q duckdb datafusion polars deltalake pyarrow
if [[ ",$only," == *",lookup,"* ]]; then
    [ -x "$venv/bin/roapi" ] || "$venv/bin/pip" install -q roapi
    if ! command -v wrk >/dev/null; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            say "installing wrk"
            apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
        else
            echo "bench: the lookup benchmark needs wrk (apt-get install wrk)" >&2
            exit 2
        fi
    fi
fi
# The build measured, named before it is made: its commit, and "-dirty" when
# anything outside docs/ differs from it (a run writes its report into docs/,
# and editing the docs during a run changes no figure).
build=$(git describe --always 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- . ':(exclude)docs' 2>/dev/null)" ]; then build="$build-dirty"; fi
export GDX_BENCH_BUILD="$build"
say "building GDX (release) at $build"
cargo build -q --release -p gdx-exchange --bin gdx

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$out" ]; then
    if [ -n "$quick" ]; then out="$(mktemp -d)"; else out=docs; fi
fi
mkdir -p "$out" "$work/sections"
figures="$work/figures.jsonl"
: >"$figures"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Each benchmark prints its tables on stdout (kept as its section) and its
# progress on stderr; a failing benchmark (answers that disagree, a peer that
# fails) stops the run: nothing is written.
run() {
    local name="$1"; shift
    say "== $name"
    local t0=$SECONDS
    GDX_BENCH_DIR= "$@" --figures "$figures" >"$work/sections/$name.md"
    say "$name: $((SECONDS - t0)) s"
}
for b in ${only//,/ }; do
    case "$b" in
        ingest) run ingest bash scripts/bench-ingest.sh $quick ;;
        query) run query bash scripts/bench-query.sh $quick ;;
        lookup) run lookup bash scripts/bench-lookup.sh $quick ;;
        push) run push bash scripts/bench-push.sh $quick ;;
        decisions)
            say "== decisions"
            t0=$SECONDS
            crit=()
            [ -z "$quick" ] || crit=(--warm-up-time 1 --measurement-time 2)
            rm -rf "$CARGO_TARGET_DIR/criterion/decisions_"*
            cargo bench -q --workspace --bench decisions -- "${crit[@]}" >"$work/decisions.log" 2>&1 \
                || { cat "$work/decisions.log" >&2; exit 1; }
            "$venv/bin/python" scripts/bench-report.py criterion "$CARGO_TARGET_DIR/criterion" "$figures" \
                >"$work/sections/decisions.md"
            say "decisions: $((SECONDS - t0)) s"
            ;;
    esac
done

"$venv/bin/python" scripts/bench-report.py report "$figures" "$work/sections" "$out" \
    --command "$command" --started "$started" --mode "${quick:-full}" --only "$only"
say "wrote $out/benchmarks.md and $out/benchmarks.json"
