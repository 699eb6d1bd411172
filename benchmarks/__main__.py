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

# Whole processes started afresh, timed from outside: (what is measured, case, command, target seconds of the median)
STARTUP = [
    ("start-up: fhir-msc --help", "help", [str(Path(sys.executable).with_name("fhir-msc")), "--help"], 0.3),
    ("start-up: import fhir_msc", "import", [sys.executable, "-c", "import fhir_msc"], 0.5),
]
STARTUP_FLOOR = ("python -c pass", [sys.executable, "-c", "pass"])  # the interpreter alone
STARTUP_RUNS = 3  # counted runs of each, after one that is not (also with --quick: each takes well under a second)
# (what is compared, fhir-msc case, peer or floor case, target, largest size the case runs at)
LOCAL = [
    ("map, validation off vs orjson floor", "map", "floor-json", "within 3x of floor", None),
    ("map, validation on vs map + models", "map-validate", "map-model", ">=3x faster", 1000),
    ("validate vs model per resource", "validate", "model-per-resource", ">=3x faster", 1000),
    ("flatten to the analysis DataFrame", "flatten", None, "", 10000),
    ("flatten Observation view: duckdb vs python", "flatten-view-duckdb", "flatten-view-python", "", None),
    ("flatten Observation view: duckdb vs fhir4ds", "flatten-view-duckdb", "flatten-view-fhir4ds", "", None),
    ("flatten Observation view: duckdb vs spark", "flatten-view-duckdb", "flatten-view-spark", "", None),
    ("flatten Observation view: duckdb vs fhiry", "flatten-view-duckdb", "flatten-fhiry-observations",
     ">=5x faster, <=1/2 memory", None),
    ("analyze M36 (python engine)", "analyze", None, "<10 s at 100k", None),
    ("analyze M36 duckdb, 1st run vs floor", "analyze-duckdb", "floor-duckdb-m36", "<= floor time", None),
    ("analyze M36 duckdb, 1st run vs python", "analyze-duckdb", "analyze", ">=3x faster at 10k", None),
    ("analyze M36 duckdb, projected vs floor", "analyze-duckdb-projected", "floor-duckdb-m36", "<2 s at 100k", None),
    ("analyze M36 duckdb, projected vs python", "analyze-duckdb-projected", "analyze", ">=3x faster at 10k", None),
    ("M36 frame only: duckdb projected vs python", "frame-m36-duckdb", "frame-m36", "", None),
    ("analyze M36 spark local vs python", "analyze-spark", "analyze", "time, memory reported", None),
]
# Peers that cannot run at every size: fhiry needs ~110 s per 100 subjects (10,881 resources)
# here, and the python view engine, which evaluates FHIRPath per resource, ~10 s per 100 subjects'
# 9,554 Observations; the orjson floor holds every built dict in memory (4.2 GB at 10,000 subjects),
# and fhir4ds its whole result (2.6 GB at 10,000 subjects: ~26 GB at 100,000, more than this machine).
SLOW_PEERS = {"flatten-fhiry-observations": 100, "floor-json": 10000, "flatten-view-python": 1000,
              "flatten-view-fhir4ds": 10000}
ONCE = {"flatten-fhiry-observations"}  # run once at every size (too slow to repeat)
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
    load = os.getloadavg()[0]  # the machine is shared: each case's 1-minute load average as it starts
    with tempfile.TemporaryDirectory(prefix="fhir-msc-bench-") as scratch:
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": scratch})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"case": case, "error": lines[-1] if lines else f"exit {done.returncode}", "load": load}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load": load}


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


# Starts ARGV with its output thrown away, waits, prints its wall and CPU seconds, peak RSS and exit code as JSON. It
# runs in a fresh interpreter because a child's peak RSS starts at its parent's (kept across fork and exec): the
# floor is this small launcher's, not the benchmark's.
_LAUNCHER = """import json, os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024, "exit": os.waitstatus_to_exitcode(status)}))"""


def whole_process(case: str, argv: list[str]) -> dict:
    """``argv`` run STARTUP_RUNS times after an uncounted warm-up, each timed from outside as a whole process."""
    runs = []
    for counted in (False, *[True] * STARTUP_RUNS):
        load = os.getloadavg()[0]
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True)
        child = json.loads(done.stdout) if done.returncode == 0 else {"exit": done.returncode}
        code = child.pop("exit")
        if code != 0:
            lines = done.stderr.strip().splitlines()
            return {"case": case, "error": lines[-1] if lines else f"exit {code}", "load": load}
        if counted:
            runs.append({"case": case, "items": 1, "load": load, **child})
    return _summary(case, runs)


def _summary(case: str, runs: list[dict]) -> dict:
    """Median time and largest peak RSS of the successful runs (the first error if none succeeded)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    summary = {"case": case, "seconds": statistics.median(r["seconds"] for r in ok), "items": ok[0]["items"],
               "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "runs": len(ok), "load": [r["load"] for r in ok]}
    if all("cpu_seconds" in r for r in ok):
        summary["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in ok)
    for key in ("tree_peak_rss_mb", "tree_hwm_sum_mb", "tree_processes"):
        if key in ok[0]:
            summary[key] = max(r[key] for r in ok)
    return summary


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
    if peer and peer.get("cpu_seconds") and ours.get("cpu_seconds"):
        result["cpu_ratio"] = peer["cpu_seconds"] / ours["cpu_seconds"]
    return result


def print_table(rows: list[dict]) -> None:
    header = (f"{'comparison':<44} {'subjects':>8} {'fhir-msc s':>10} {'cpu s':>7} {'RSS MB':>7} {'peer/floor':<26} "
              f"{'peer s':>8} {'cpu s':>7} {'RSS MB':>7} {'peer÷ours':>9} {'cpu ÷':>7} {'load':>9}  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        ours, peer = r["fhir_msc"], r.get("peer") or {}
        ours_s = f"{ours['seconds']:.2f}" if "seconds" in ours else "error"
        peer_s = f"{peer['seconds']:.2f}" if "seconds" in peer else ("error" if peer else "")
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if r.get("cpu_ratio") else ""
        load = "/".join(f"{max(side['load']) if isinstance(side['load'], list) else side['load']:.1f}"
                        for side in (ours, peer) if side and "load" in side)
        print(f"{r['comparison']:<44} {r['subjects'] or '':>8} {ours_s:>10} {_cpu(ours):>7} {ours.get('peak_rss_mb', 0):>7.0f} "
              f"{(r['peer_case'] or ''):<26} {peer_s:>8} {_cpu(peer):>7} {peer.get('peak_rss_mb', 0) if peer else 0:>7.0f} "
              f"{ratio:>9} {cpu_ratio:>7} {load:>9}  {r['target']}")
    for r in rows:
        for side in ("fhir_msc", "peer"):
            if r.get(side) and "error" in r[side]:
                print(f"  {r['comparison']} ({side}, {r['subjects']}): {r[side]['error']}")


def _cpu(result: dict) -> str:
    return f"{result['cpu_seconds']:.2f}" if "cpu_seconds" in result else ""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="100 subjects, fhir-msc only, one run each (start-up: median of 3): under a minute.")
    parser.add_argument("--sizes", default="100,1000,10000", help="Cohort sizes (subjects, multiples of 100) for local cases.")
    parser.add_argument("--server-sizes", default="100", help="Cohort sizes for push/pull against the loopback server.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per case up to 1,000 subjects (once above); median time reported.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results.json", help="Where the JSON goes.")
    parser.add_argument("--cases", default="", help="Only these fhir-msc cases, comma-separated (e.g. analyze,map); all if empty.")
    parser.add_argument("--skip", default="", help="Leave out these cases (fhir-msc or peer), comma-separated.")
    args = parser.parse_args()
    skip = {case for case in args.skip.split(",") if case}
    done: dict[tuple[str, int], dict] = {}

    def measured(case: str, size: int, run) -> dict:
        """Each case runs once per size; rows comparing it with several peers share that result."""
        if (case, size) not in done:
            done[(case, size)] = run()
        return done[(case, size)]
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    server_sizes = [100] if args.quick else [int(s) for s in args.server_sizes.split(",") if s]
    repeat = 1 if args.quick else args.repeat
    only = {case for case in args.cases.split(",") if case}
    print(f"machine: {machine()}\n")
    rows = []
    for label, case, argv, limit in STARTUP:
        if (only and case not in only) or case in skip:
            continue
        ours = measured(case, 0, lambda: whole_process(case, argv))
        floor = None if args.quick else measured(STARTUP_FLOOR[0], 0, lambda: whole_process(*STARTUP_FLOOR))
        rows.append(row(label, 0, ours, STARTUP_FLOOR[0] if floor else None, floor, f"median <= {limit} s"))
    for size in sizes:
        tables = scaled_cohort(size)
        store = mapped_store(tables, size)
        runs = repeat if size <= 1000 else 1
        for label, ours_case, peer_case, target, largest in LOCAL:
            if (largest and size > largest) or (only and ours_case not in only) or ours_case in skip:
                continue
            ours = measured(ours_case, size, lambda: repeated(ours_case, tables, store, runs))
            with_peer = peer_case and not args.quick and size <= SLOW_PEERS.get(peer_case, size) \
                and not (skip and peer_case in skip)
            peer = measured(peer_case, size, lambda: repeated(peer_case, tables, store, 1 if peer_case in ONCE else runs)) \
                if with_peer else None
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
    checks = targets(done)
    for line in checks:
        print(line)
    args.out.write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], "rows": rows, "targets": checks}, indent=2))
    print(f"\nJSON: {args.out}")


def targets(done: dict[tuple[str, int], dict]) -> list[str]:
    """The start-up targets and the analysis engines' targets, computed from this run's results (one line each; only what was run)."""
    def get(case: str, size: int, key: str = "seconds") -> float | None:
        return done.get((case, size), {}).get(key)

    lines = []
    for label, case, _, limit in STARTUP:
        seconds = get(case, 0)
        if seconds is not None:
            lines.append(f"{label}: median {seconds:.2f} s of {STARTUP_RUNS} runs (target <= {limit} s): "
                         f"{'met' if seconds <= limit else 'missed'}")
    projected = get("analyze-duckdb-projected", 100000)
    if projected is not None:
        lines.append(f"analyze M36 at 100k with projection: {projected:.2f} s (target < 2 s): {'met' if projected < 2 else 'missed'}")
    for size in sorted({size for _, size in done}):
        first, floor = get("analyze-duckdb", size), get("floor-duckdb-m36", size)
        if first is not None and floor is not None:
            lines.append(f"analyze M36 at {size}, first run {first:.2f} s vs floor {floor:.2f} s ({first / floor:.2f}x the floor; "
                         f"CPU {_ratio(get('analyze-duckdb', size, 'cpu_seconds'), get('floor-duckdb-m36', size, 'cpu_seconds'))}; "
                         f"target <= floor): {'met' if first <= floor else 'missed'}")
    python = get("analyze", 10000)
    for case in ("analyze-duckdb", "analyze-duckdb-projected"):
        ours = get(case, 10000)
        if python is not None and ours is not None:
            lines.append(f"analyze M36 at 10k, {case} {ours:.2f} s vs python {python:.2f} s: {python / ours:.2f}x "
                         f"(CPU {_ratio(get('analyze', 10000, 'cpu_seconds'), get(case, 10000, 'cpu_seconds'))}; "
                         f"target >= 3x): {'met' if python / ours >= 3 else 'missed'}")
    for case in ("analyze-duckdb", "analyze-duckdb-projected", "analyze-spark", "analyze"):
        large, small = get(case, 100000, "peak_rss_mb"), get(case, 10000, "peak_rss_mb")
        if large is not None and small is not None:
            lines.append(f"{case} peak RSS 100k {large:.0f} MB / 10k {small:.0f} MB = {large / small:.2f}x "
                         f"(target <= 1.2x): {'met' if large <= 1.2 * small else 'missed'}")
    return lines


def _ratio(top: float | None, bottom: float | None) -> str:
    return f"{top / bottom:.2f}x" if top and bottom else "n/a"


def _with_url(case: str, tables: Path, store: Path, repeat: int, server: LoopbackServer) -> dict:
    return _summary(case, [run_case(case, tables, store, server.base) for _ in range(repeat)])


if __name__ == "__main__":
    main()
