#!/usr/bin/env bash
# Governance overhead benchmark: ~10 analytical queries on a generated
# population register (and a pension register a quarter its size) through
# GDX's governed path, against plain DataFusion running the same queries with
# the same masks and row filters written out by hand (same engine, same
# tables, paired, see exchange/benches/governance.rs), and DuckDB on the same
# Parquet files with the masks written in its SQL, in one run. Every answer is
# checked equal (rows and a checksum) across the three before any time is
# reported. Hot: the files in the page cache; cold: the page cache dropped
# before each run (needs root; said when it cannot be). Prints Markdown tables
# of medians with min–max.
#
#   scripts/bench-query.sh [--rows N] [--runs R] [--quick] [--figures FILE]
#
# Defaults: 10,000,000 people, 5 runs. --quick: 200,000 people, 3 runs.
# --figures appends one JSON object per figure to FILE (read by
# scripts/bench.sh). Builds in release; installs duckdb into a virtual
# environment under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
runs=5
figures=
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --quick) rows=200000; runs=3; shift ;;
        --figures) figures="$2"; shift 2 ;;
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
cargo bench -q --workspace --bench governance -- --rows "$rows" --runs "$runs" --cold --dir "$work" --out "$work/gdx.json"

"$venv/bin/python" - "$work/gdx.json" "$runs" "$figures" <<'PY'
import json, os, statistics, subprocess, sys, time
import duckdb

res = json.load(open(sys.argv[1]))
runs = int(sys.argv[2])
figures = sys.argv[3]
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
def checksum(rows):
    """The governance bench's checksum: numbers summed, the rest's text length."""
    numbers, text = 0.0, 0
    for row in rows:
        for v in row:
            v = "∅" if v is None else str(v)
            try:
                numbers += float(v)
            except ValueError:
                text += len(v)
    return numbers, text

def drop_caches():
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False

def span(v):
    return f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"

cold_ok = drop_caches()
hot_lines, cold_lines, fig = [], [], []
for q in res["queries"]:
    view = "pop_meixian" if q["reader"] == "meixian" else "pop_minzheng"
    text = sql[q["name"]].format(pop=view)
    rows = con.execute(text).fetchall()
    if len(rows) != q["rows"]:
        sys.exit(f"DuckDB answered {len(rows)} rows to {q['name']}, GDX {q['rows']}")
    n, t = checksum(rows)
    gn, gt = q["checksum"].split("/")
    if abs(n - float(gn)) > 1e-6 * max(1.0, abs(n)) + 0.01 or t != int(gt):
        sys.exit(f"DuckDB's answer to {q['name']} differs from GDX's: checksum {n:.2f}/{t} against {q['checksum']}")
    times, cold = [], []
    for _ in range(runs):
        t0 = time.perf_counter(); con.execute(text).fetchall(); times.append(time.perf_counter() - t0)
    for _ in range(runs if q["governed_cold_runs"] else 0):
        drop_caches()
        t0 = time.perf_counter(); con.execute(text).fetchall(); cold.append(time.perf_counter() - t0)
    gov, plain = q["governed_runs"], q["datafusion_runs"]
    hot_lines.append(f"| {q['name']} | {span(gov)} | {span(plain)} | {statistics.median(gov) / statistics.median(plain):.2f} | {span(times)} |")
    if cold:
        gc, pc = q["governed_cold_runs"], q["datafusion_cold_runs"]
        cold_lines.append(f"| {q['name']} | {span(gc)} | {span(pc)} | {statistics.median(gc) / statistics.median(pc):.2f} | {span(cold)} |")
    for cache, sides in (("hot", (("GDX", gov), ("DataFusion", plain), ("DuckDB", times))),
                         ("cold", (("GDX", q["governed_cold_runs"]), ("DataFusion", q["datafusion_cold_runs"]), ("DuckDB", cold)))):
        for system, v in sides:
            if v:
                fig.append({"benchmark": f"query {cache}: {q['name']}", "system": system, "metric": "time",
                            "median": statistics.median(v), "min": min(v), "max": max(v), "unit": "s", "runs": len(v)})

head = "| query | GDX governed | DataFusion, by hand | ratio | DuckDB, by hand |\n|---|---:|---:|---:|---:|"
print(f"\n{res['rows']:,} people, {res['pension_rows']:,} pensions; every answer checked equal (rows and checksum) "
      f"across the three first; medians of {runs} runs (min–max), seconds\n")
print("Hot (the files in the page cache):\n")
print(head)
print("\n".join(hot_lines))
if cold_lines:
    print(f"\nCold (the page cache dropped before each run{'' if cold_ok else '; NOT dropped here: no permission'}):\n")
    print(head)
    print("\n".join(cold_lines))
ratios = [statistics.median(q["governed_runs"]) / statistics.median(q["datafusion_runs"]) for q in res["queries"]]
geo = statistics.geometric_mean(ratios)
print(f"\nGeometric mean of governed / hand-written DataFusion (hot): {geo:.3f}")
fig.append({"benchmark": "query hot: all queries", "system": "GDX", "metric": "governed / hand-written DataFusion (geometric mean)",
            "median": geo, "min": min(ratios), "max": max(ratios), "unit": "×", "runs": runs})
if figures:
    with open(figures, "a", encoding="utf-8") as f:
        for o in fig:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
PY
