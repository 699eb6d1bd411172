"""Run the benchmark suite and print a table: `python -m benchmarks [--quick] [--sizes 1000,10000]`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fhir_msc import Store, get_version, load_study
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.study.definition import REPO_ROOT
from fhir_msc.tables.sdtm import RejectLog

from .cohort import CACHE, scaled_cohort

sys.path.insert(0, str(REPO_ROOT / "tests"))
from loopback import LoopbackServer  # noqa: E402

# (what is compared, fhir-msc case, peer or floor case, target, largest size the case runs at)
LOCAL = [
    ("map, validation off vs orjson floor", "map", "floor-json", "within 3x of floor", None),
    ("map, validation on vs map + models", "map-validate", "map-model", ">=3x faster", 1000),
    ("validate vs model per resource", "validate", "model-per-resource", ">=3x faster", 1000),
    ("flatten to DataFrame vs fhiry", "flatten", "flatten-fhiry", ">=5x faster, <=1/2 memory", 10000),
    ("analyze month 36 from store", "analyze", None, "<10 s at 100k", None),
]
# Peers that cannot run at every size: fhiry needs ~110 s per 100 subjects (10,881 resources)
# here; the orjson floor holds every built dict in memory (4.2 GB at 10,000 subjects).
SLOW_PEERS = {"flatten-fhiry": 100, "floor-json": 10000}
SERVER = [
    ("push: transactions vs 1 PUT/resource", "push-transactions", "push-single", ">=10x"),
    ("push: fhir-msc vs fhirpy loop", "push-transactions", "push-fhirpy", "faster"),
    ("pull to DataFrame vs fhirpy+pandas", "pull", "pull-fhirpy", "faster"),
    ("pull: bulk $export vs paged search", "pull-bulk", "pull-paged", ">=5x at 10k, flat memory"),
    ("hospital-pull --bulk, every subject enrolled", "hospital-pull-bulk", None, "memory at 10k as at 100"),
]
# The paged pull at 10,000 subjects needs hours on the loopback server (every search scans all of a
# type's resources): it is measured as far as it gets by `python -m benchmarks.paged_rate` instead.
SLOW_SERVER_PEERS = {"pull-paged": 1000}
NODE_HEAP_MB = 12288  # the loopback server's heap: a 10,000-subject cohort (~1.1M resources) needs ~4 GB


def run_case(case: str, tables: Path, store: Path, url: str | None = None) -> dict:
    """Run one case in its own process; what it writes under TMPDIR is removed afterwards."""
    argv = [sys.executable, "-m", "benchmarks.cases", case, str(tables), str(store), *([url] if url else [])]
    with tempfile.TemporaryDirectory(prefix="fhir-msc-bench-") as scratch:
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": scratch})
    if done.returncode != 0:
        return {"case": case, "error": done.stderr.strip().splitlines()[-1] if done.stderr else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated(case: str, tables: Path, store: Path, repeat: int, server_for_run=None) -> dict:
    runs = []
    for _ in range(repeat):
        server = server_for_run() if server_for_run else None
        try:
            runs.append(run_case(case, tables, store, server.base if server else None))
        finally:
            if server:
                server.stop()
    return _summary(case, runs)


def _summary(case: str, runs: list[dict]) -> dict:
    """Median time and largest peak RSS of the successful runs (the first error if none succeeded)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {"case": case, "seconds": statistics.median(r["seconds"] for r in ok), "items": ok[0]["items"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "runs": len(ok)}


def mapped_store(tables: Path, size: int) -> Path:
    store = CACHE / f"store-{size}"
    if not (store / "done").exists():
        Store(store).clear()
        Store(store).write(tables_to_fhir(load_study(), tables, get_version("R4"), RejectLog(None)))
        (store / "done").write_text("")
    return store


def loaded_server(store: Path) -> LoopbackServer:
    """A loopback server preloaded with the store (FHIR_TEST_PRELOAD: straight into its memory, not through HTTP)."""
    return LoopbackServer(env={"FHIR_TEST_PRELOAD": str(store), "NODE_OPTIONS": f"--max-old-space-size={NODE_HEAP_MB}"})


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.machine())
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return f"{cpu}, {os.cpu_count()} cores, {mem} GiB, Python {platform.python_version()}"


def row(label: str, size: int, ours: dict, peer_name: str | None, peer: dict | None, target: str) -> dict:
    result = {"comparison": label, "subjects": size, "target": target, "fhir_msc": ours, "peer_case": peer_name, "peer": peer}
    if "seconds" in ours:
        result["rate"] = ours["items"] / ours["seconds"] if ours["seconds"] else None
    if peer and "seconds" in peer and "seconds" in ours and ours["seconds"]:
        result["ratio"] = peer["seconds"] / ours["seconds"]
    return result


def print_table(rows: list[dict]) -> None:
    header = f"{'comparison':<38} {'subjects':>8} {'fhir-msc s':>10} {'items/s':>9} {'RSS MB':>7} {'peer/floor':<19} {'peer s':>8} {'RSS MB':>7} {'peer÷ours':>9}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        ours, peer = r["fhir_msc"], r.get("peer") or {}
        ours_s = f"{ours['seconds']:.2f}" if "seconds" in ours else "error"
        rate = f"{r['rate']:.0f}" if r.get("rate") else ""
        peer_s = f"{peer['seconds']:.2f}" if "seconds" in peer else ("error" if peer else "")
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        print(f"{r['comparison']:<38} {r['subjects']:>8} {ours_s:>10} {rate:>9} {ours.get('peak_rss_mb', 0):>7.0f} "
              f"{(r['peer_case'] or ''):<19} {peer_s:>8} {peer.get('peak_rss_mb', 0) if peer else 0:>7.0f} {ratio:>9}  {r['target']}")
    for r in rows:
        for side in ("fhir_msc", "peer"):
            if r.get(side) and "error" in r[side]:
                print(f"  {r['comparison']} ({side}, {r['subjects']}): {r[side]['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 subjects, fhir-msc only, one run each: under a minute.")
    parser.add_argument("--sizes", default="100,1000,10000", help="Cohort sizes (subjects, multiples of 100) for local cases.")
    parser.add_argument("--server-sizes", default="100", help="Cohort sizes for push/pull against the loopback server.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per case up to 1,000 subjects (once above); median time reported.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results.json", help="Where the JSON goes.")
    parser.add_argument("--cases", default="", help="Only these fhir-msc cases, comma-separated (e.g. analyze,map); all if empty.")
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    server_sizes = [100] if args.quick else [int(s) for s in args.server_sizes.split(",") if s]
    repeat = 1 if args.quick else args.repeat
    only = {case for case in args.cases.split(",") if case}
    print(f"machine: {machine()}\n")
    rows = []
    for size in sizes:
        tables = scaled_cohort(size)
        store = mapped_store(tables, size)
        runs = repeat if size <= 1000 else 1
        for label, ours_case, peer_case, target, largest in LOCAL:
            if (largest and size > largest) or (only and ours_case not in only):
                continue
            ours = repeated(ours_case, tables, store, runs)
            with_peer = peer_case and not args.quick and size <= SLOW_PEERS.get(peer_case, size)
            peer = repeated(peer_case, tables, store, 1 if peer_case == "flatten-fhiry" else runs) if with_peer else None
            rows.append(row(label, size, ours, peer_case if with_peer else None, peer, target))
    for size in server_sizes:
        tables = scaled_cohort(size)
        store = mapped_store(tables, size)
        for label, ours_case, peer_case, target in SERVER:
            if only and ours_case not in only:
                continue
            if args.quick and label != SERVER[0][0] and ours_case.startswith("push"):
                continue  # one push is enough for --quick
            if ours_case.startswith("push"):
                ours = repeated(ours_case, tables, store, repeat, LoopbackServer)
                peer = None if args.quick else repeated(peer_case, tables, store, repeat, LoopbackServer)
            else:
                server = loaded_server(store)
                try:
                    ours = _with_url(ours_case, tables, store, repeat, server)
                    with_peer = peer_case and not args.quick and size <= SLOW_SERVER_PEERS.get(peer_case, size)
                    peer = _with_url(peer_case, tables, store, repeat, server) if with_peer else None
                finally:
                    server.stop()
            rows.append(row(label, size, ours, peer_case if peer else None, peer, target))
            print(json.dumps(rows[-1]), flush=True)  # long server runs: each row as soon as it is measured
    print_table(rows)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"\nJSON: {args.out}")


def _with_url(case: str, tables: Path, store: Path, repeat: int, server: LoopbackServer) -> dict:
    return _summary(case, [run_case(case, tables, store, server.base) for _ in range(repeat)])


if __name__ == "__main__":
    main()
