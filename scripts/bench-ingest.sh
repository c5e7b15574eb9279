#!/usr/bin/env bash
# Ingest benchmark: pushing a population register as CSV and as NDJSON to a
# committed GDX version, side by side with DuckDB and Apache DataFusion
# (Python) converting the same file to Parquet, in one run on this machine.
# Reports MB/s and peak RSS, checks that every system holds the same rows
# before any time is reported, and prints one table per format.
#
#   scripts/bench-ingest.sh [--rows N] [--runs R] [--quick] [--formats csv,ndjson] [--figures FILE]
#
# Defaults: 10,000,000 rows (about 1 GB of CSV), 5 runs each. --quick: 200,000
# rows, 3 runs. --figures appends one JSON object per figure to FILE (read by
# scripts/bench.sh). Needs a release build (cargo build --release); installs
# duckdb, datafusion and polars into a virtual environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
runs=5
formats=csv,ndjson
figures=
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --quick) rows=200000; runs=3; shift ;;
        --formats) formats="$2"; shift 2 ;;
        --figures) figures="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_BENCH_VENV:-$HOME/.cache/gdx-bench-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb, datafusion, polars, deltalake' 2>/dev/null \
    || "$venv/bin/pip" install -q duckdb datafusion polars deltalake pyarrow
cargo build -q --release -p gdx-exchange
gdx="$CARGO_TARGET_DIR/release/gdx"

work="${GDX_BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
csv="$work/population.csv"
echo "bench: generating $rows rows" >&2
"$gdx" datagen population --rows "$rows" --seed 42 --out "$csv" 2>/dev/null
"$gdx" datagen population --definition gongan > "$work/population.json"
if [[ ",$formats," == *",ndjson,"* ]]; then
    echo "bench: writing the same rows as NDJSON" >&2
    "$venv/bin/python" - "$csv" "$work/population.ndjson" <<'PY'
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f"COPY (SELECT * FROM read_csv('{sys.argv[1]}', header=true, all_varchar=true)) TO '{sys.argv[2]}' (FORMAT json)")
PY
fi

gdx_run() {
    local run="$1" dir="$work/gdx-$1" port
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    export GDX_ADMIN_TOKEN="gdx_bench_admin_$(date +%s%N)"
    GDX_LOG=warn "$gdx" serve --data-dir "$dir" --listen "127.0.0.1:$port" --secret-key-file "$work/secret.key" \
        --maintenance-interval-hours 0 &
    local server=$!
    local url="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
    GDX_URL="$url" GDX_TOKEN="$GDX_ADMIN_TOKEN" "$gdx" department add gongan --name 梅州市公安局 >/dev/null
    local steward
    steward=$(GDX_URL="$url" GDX_TOKEN="$GDX_ADMIN_TOKEN" "$gdx" principal add --name s --department gongan --role steward --json \
        | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    GDX_URL="$url" GDX_TOKEN="$steward" "$gdx" dataset register "$work/population.json" >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    GDX_URL="$url" GDX_TOKEN="$steward" "$gdx" push gongan.population "$input" --json > "$work/push.json" 2>/dev/null
    t1=$(date +%s.%N)
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
    kill "$server"; wait "$server" 2>/dev/null || true
    local check
    check=$("$venv/bin/python" -c "
import polars as pl
df = pl.read_delta('$dir/lake/gongan/population')
print(df.height, df['id_number'].n_unique(), df['birth_date'].cast(pl.Int64).sum())")
    echo -e "GDX push ($label → Delta, validated)\t$run\t$t0\t$t1\t$rss\t$check" >> "$results"
    rm -rf "$dir"
}

py_run() {
    local system="$1" run="$2"
    "$venv/bin/python" - "$system" "$input" "$work/out-$system.parquet" "$label" <<'PY' >> "$results"
import resource, sys, time
system, path, out, label = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ndjson = path.endswith(".ndjson")
cols = {"id_number": "VARCHAR", "name": "VARCHAR", "gender": "VARCHAR", "birth_date": "DATE",
        "county_code": "VARCHAR", "address": "VARCHAR", "phone": "VARCHAR"}
t0 = time.time()
if system == "duckdb":
    import duckdb
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"
    source = f"read_json('{path}', format='newline_delimited', columns={spec})" if ndjson \
        else f"read_csv('{path}', header=true, columns={spec})"
    con.execute(f"COPY (SELECT * FROM {source}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    t1 = time.time()
    n, u, s = con.execute(f"SELECT count(*), count(DISTINCT id_number), sum(datediff('day', DATE '1970-01-01', birth_date)) FROM '{out}'").fetchone()
    name = f"DuckDB ({label} → Parquet)"
else:
    import datafusion, pyarrow as pa
    ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(2))
    schema = pa.schema([(k, pa.date32() if v == "DATE" else pa.string()) for k, v in cols.items()])
    if ndjson:
        ctx.register_json("p", path, schema=schema, file_extension=".ndjson")
    else:
        ctx.register_csv("p", path, schema=schema, has_header=True)
    ctx.sql(f"COPY p TO '{out}' STORED AS PARQUET OPTIONS ('format.compression' 'zstd(3)')").collect()
    t1 = time.time()
    ctx.register_parquet("o", out)
    r = ctx.sql("SELECT count(*) AS n, count(DISTINCT id_number) AS u, sum(CAST(birth_date AS BIGINT)) AS s FROM o").to_pydict()
    n, u, s = r["n"][0], r["u"][0], r["s"][0]
    name = f"DataFusion ({label} → Parquet)"
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{name}\t{sys.argv[0]}\t{t0}\t{t1}\t{rss}\t{n} {u} {s}")
PY
    # Mark the run number (the heredoc cannot see it).
    sed -i "\$s/\t-\t/\t$run\t/" "$results"
    rm -f "$work/out-$system.parquet"
}

bench_format() {
    local format="$1" input label
    case "$format" in
        csv) input="$csv"; label=CSV ;;
        ndjson) input="$work/population.ndjson"; label=NDJSON ;;
        *) echo "unknown format $format" >&2; exit 2 ;;
    esac
    local results="$work/results-$format.tsv"
    : > "$results"
    for r in $(seq 1 "$runs"); do
        echo "bench: $label run $r/$runs" >&2
        gdx_run "$r"
        py_run datafusion "$r"
        py_run duckdb "$r"
    done
    "$venv/bin/python" - "$results" "$(stat -c %s "$input")" "$rows" "$runs" "$label" "$figures" <<'PY'
import collections, json, platform, subprocess, sys, statistics
path, size, rows, runs, label, figures = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
by = collections.defaultdict(list)
checks = {}
for line in open(path, encoding="utf-8"):
    name, _, t0, t1, rss, check = line.rstrip("\n").split("\t")
    by[name].append((float(t1) - float(t0), int(rss)))
    checks.setdefault(name, set()).add(check)
# Every system must hold the same rows: count, distinct keys, sum of birth dates.
distinct = {c for v in checks.values() for c in v}
if len(distinct) != 1:
    sys.exit(f"bench: the systems hold different rows: {checks}")
def cpu():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return platform.processor()
import duckdb, datafusion
lines = []
lines.append("| system | median s | min–max s | MB/s (median) | peak RSS MB (max) | GDX / peer |")
lines.append("|---|---|---|---|---|---|")
med = {k: statistics.median(t for t, _ in v) for k, v in by.items()}
gdx = next(k for k in by if k.startswith("GDX"))
out = []
for k, v in by.items():
    ts = [t for t, _ in v]
    rss = max(r for _, r in v) / 1024
    ratio = "—" if k == gdx else f"{med[gdx] / med[k]:.2f}× the time"
    lines.append(f"| {k} | {med[k]:.1f} | {min(ts):.1f}–{max(ts):.1f} | {size / 1e6 / med[k]:.0f} | {rss:.0f} | {ratio} |")
    system = k.split()[0]
    mbs = sorted(size / 1e6 / t for t in ts)
    out.append({"benchmark": f"ingest {label}", "system": system, "metric": "throughput", "median": statistics.median(mbs),
                "min": mbs[0], "max": mbs[-1], "unit": "MB/s", "runs": len(ts)})
    rsss = sorted(r / 1024 for _, r in v)
    out.append({"benchmark": f"ingest {label}", "system": system, "metric": "peak RSS", "median": statistics.median(rsss),
                "min": rsss[0], "max": rsss[-1], "unit": "MB", "runs": len(ts)})
print(f"{label}: rows: {rows:,}; file: {size / 1e6:.0f} MB; runs: {runs}; checked equal: {distinct.pop()} (rows, distinct keys, sum of birth dates)")
print(f"Machine: {cpu()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; duckdb {duckdb.__version__}, datafusion (Python) {datafusion.__version__}")
print()
print("\n".join(lines))
print()
if figures:
    with open(figures, "a", encoding="utf-8") as f:
        for o in out:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
PY
}

for format in ${formats//,/ }; do
    bench_format "$format"
done
