"""A paged pull too long to finish, measured as far as it gets: `python -m benchmarks.paged_rate SIZE MINUTES OUT [TIMEOUT]`.

Starts the loopback server preloaded with the SIZE-subject cohort, runs the paged pull (the
`pull-paged` case's call) with a progress recorder, and stops it after MINUTES. OUT (JSON)
gets every stage with its start time and how far it got, the time the server took to load,
and this process's peak RSS so far. TIMEOUT (seconds, default the client's 30) is how long the
client waits for one answer: a server scanning every resource per search may need longer. What
it records is measured; any estimate of the whole pull made from it is an extrapolation and
must be labelled so wherever it is quoted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhir_msc import Store, load_study
from fhir_msc.errors import FhirMscError
from fhir_msc.progress import Progress
from fhir_msc.server.client import FhirClient
from fhir_msc.server.journal import Journal
from fhir_msc.server.sync import pull

from .__main__ import loaded_server, machine, mapped_store
from .cases import peak_rss_mb
from .cohort import scaled_cohort


class _Stop(Exception):
    pass


class Recorder(Progress):
    """Each stage: label, total, unit, seconds from the pull's start when it began, units done and when."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: list[dict] = []

    def start(self, label: str, total: int | None = None, unit: str = "resources") -> None:
        now = time.perf_counter() - self.started
        self.stages.append({"stage": label, "total": total, "unit": unit, "began_s": round(now, 2), "done": 0,
                            "last_advance_s": None})

    def advance(self, n: int = 1) -> None:
        if self.stages:
            self.stages[-1]["done"] += n
            self.stages[-1]["last_advance_s"] = round(time.perf_counter() - self.started, 2)


def main() -> None:
    size, minutes, out = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    store = mapped_store(scaled_cohort(size), size)
    loading = time.perf_counter()
    server = loaded_server(store)
    loaded_s = time.perf_counter() - loading
    recorder = Recorder()
    finished, error = False, None

    def stop(*_: object) -> None:
        raise _Stop

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(minutes * 60))
    try:
        target = Store(tempfile.mkdtemp(prefix="bench-paged-rate-"))
        pull(FhirClient(server.base, timeout=timeout), load_study(), target, Journal(Path(tempfile.mkdtemp(prefix="bench-pr-"))),
             progress=recorder)
        finished = True
    except _Stop:
        pass
    except FhirMscError as exc:  # e.g. a search the server did not answer in time: recorded, not lost
        error = str(exc)
    signal.alarm(0)
    elapsed = time.perf_counter() - recorder.started
    result = {"machine": machine(), "case": "pull-paged", "subjects": size, "client_timeout_s": timeout,
              "server_load_seconds": round(loaded_s, 1),
              "finished": finished, "error": error, "seconds_run": round(elapsed, 1), "peak_rss_mb": peak_rss_mb(),
              "stages": recorder.stages}
    out.write_text(json.dumps(result, indent=2))
    try:
        server.stop()
    except subprocess.TimeoutExpired:  # busy in a long search: SIGTERM waits for it
        server.process.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
