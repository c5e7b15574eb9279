#!/usr/bin/env bash
# Governance overhead benchmark: ~10 analytical queries on a generated
# population register (and a pension register a quarter its size) through
# GDX's governed path, against plain DataFusion running the same queries with
# the same masks and row filters written out by hand (same engine, same
# tables, paired, see exchange/benches/governance.rs), and DuckDB on the same
# Parquet files with the masks written in its SQL, in one run. Prints a
# Markdown table of medians.
#
#   scripts/bench-query.sh [--rows N] [--runs R] [--quick]
#
# Defaults: 10,000,000 people, 5 runs. --quick: 200,000 people, 3 runs.
# Builds in release; installs duckdb into a virtual environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
runs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --quick) rows=200000; runs=3; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gdx-target}"
venv="${GDX_BENCH_VENV:-$HOME/.cache/gdx-bench-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb

work="${GDX_BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"
[ -n "${GDX_BENCH_DIR:-}" ] || trap 'rm -rf "$work"' EXIT

# GDX governed vs hand-written DataFusion (keeps the lake for DuckDB).
cargo bench -q --workspace --bench governance -- --rows "$rows" --runs "$runs" --dir "$work" --out "$work/gdx.json"

"$venv/bin/python" - "$work/gdx.json" "$runs" <<'PY'
import json, statistics, sys, time
import duckdb

res = json.load(open(sys.argv[1]))
runs = int(sys.argv[2])
con = duckdb.connect()
con.execute("PRAGMA threads=2")
pop_files = [u.removeprefix("file://") for u in res["files"]["population"]]
pen_files = [u.removeprefix("file://") for u in res["files"]["pensions"]]
# Masks written in DuckDB's SQL; the keyed hash as two SHA-256 rounds (HMAC's work).
masked = """SELECT sha256('opad' || sha256('ipad' || id_number)) AS id_number,
    substr(name, 1, 1) || repeat('*', length(name) - 1) AS name, gender,
    make_date(year(birth_date), 1, 1) AS birth_date, county_code, '***' AS address,
    substr(phone, 1, 3) || '****' || substr(phone, 8) AS phone FROM read_parquet({files})"""
con.execute(f"CREATE VIEW pop_minzheng AS {masked.format(files=pop_files)}")
con.execute(f"CREATE VIEW pop_meixian AS {masked.format(files=pop_files)} WHERE county_code = '441403'")
con.execute(f"""CREATE VIEW pen AS SELECT sha256('opad' || sha256('ipad' || id_number)) AS id_number,
    monthly_amount, started_on, status FROM read_parquet({pen_files})""")
sql = {
    "count": "SELECT count(*) FROM {pop}",
    "group by county": "SELECT county_code, count(*) FROM {pop} GROUP BY 1 ORDER BY 1",
    "filter on a clear column": "SELECT gender, count(*) FROM {pop} WHERE county_code = '441402' GROUP BY 1 ORDER BY 1",
    "group by masked year": "SELECT year(birth_date) AS y, count(*) FROM {pop} GROUP BY 1 ORDER BY 1",
    "top-k of masked names": "SELECT name, birth_date, phone FROM {pop} WHERE county_code = '441424' ORDER BY birth_date DESC, phone LIMIT 10",
    "surnames (masked text)": "SELECT substr(name, 1, 1) AS surname, count(*) FROM {pop} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
    "distinct hashed IDs, one county": "SELECT count(DISTINCT id_number) FROM {pop} WHERE county_code = '441426'",
    "join of two departments": "SELECT p.county_code, count(*), sum(s.monthly_amount) FROM {pop} p JOIN pen s ON p.id_number = s.id_number WHERE p.county_code = '441427' GROUP BY 1 ORDER BY 1",
    "window": "SELECT county_code, gender, n, rank() OVER (PARTITION BY county_code ORDER BY n DESC) AS r FROM (SELECT county_code, gender, count(*) AS n FROM {pop} GROUP BY 1, 2) ORDER BY 1, 4, 2",
    "row filter (county bureau)": "SELECT gender, count(*), min(birth_date) FROM {pop} GROUP BY 1 ORDER BY 1",
    "masked phone prefix": "SELECT count(*) FROM {pop} WHERE phone LIKE '138%'",
}
print(f"\n{res['rows']:,} people, {res['pension_rows']:,} pensions; medians of {runs} runs (s)\n")
print("| query | GDX governed | DataFusion, by hand | ratio | DuckDB, by hand |")
print("|---|---:|---:|---:|---:|")
for q in res["queries"]:
    view = "pop_meixian" if q["reader"] == "meixian" else "pop_minzheng"
    text = sql[q["name"]].format(pop=view)
    rows = con.execute(text).fetchall()
    if len(rows) != q["rows"]:
        sys.exit(f"DuckDB answered {len(rows)} rows to {q['name']}, GDX {q['rows']}")
    times = []
    for _ in range(runs):
        t = time.perf_counter(); con.execute(text).fetchall(); times.append(time.perf_counter() - t)
    duck = statistics.median(times)
    print(f"| {q['name']} | {q['governed_s']:.3f} | {q['datafusion_s']:.3f} | {q['governed_s'] / q['datafusion_s']:.2f} | {duck:.3f} |")
print(f"\nGeometric mean of governed / hand-written DataFusion: {res['geomean_ratio']:.3f}")
PY
