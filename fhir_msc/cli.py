"""The ``fhir-msc`` command line: parse, call fhir_msc.jobs, print.

Exit codes (see fhir_msc.errors.ExitCode): 0 success, 1 internal error, 2 bad usage,
3 some input rows rejected, 4 input unusable, 5 FHIR validation failed, 6 a round trip
or verification did not reproduce its source.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from . import jobs
from .analysis.report import (
    FORMATS,
    comparison_table,
    forest_plot,
    render,
    verification_table,
)
from .errors import ExitCode, FhirMscError
from .fhir.versions import VERSIONS, get_version
from .server.client import connect
from .server.sync import METHODS
from .study.definition import DEFAULT_STUDY, Study, load_study

MAX_SHOWN = 20


class _Cli(click.Group):
    """Turns FhirMscError into one line on stderr and its exit code: no stack traces for user errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FhirMscError as exc:
            click.echo(f"fhir-msc: error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple record
        return _to_jsonable(value._asdict())
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_to_jsonable(value), indent=2))


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Any]:
    """A tqdm counter on stderr when interactive; a no-op otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bar = tqdm(desc=label, unit=" rec", file=sys.stderr, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


_study_option = click.option(
    "--study", "study_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_STUDY,
    envvar="FHIR_MSC_STUDY", show_default=True, metavar="YAML",
    help="Study definition YAML file, also read from FHIR_MSC_STUDY.")
_version_option = click.option(
    "--fhir-version", type=click.Choice(VERSIONS, case_sensitive=False), default="R4", show_default=True,
    help="FHIR version to write or validate against.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fhir-msc")
def main() -> None:
    """Clinical-trial tables ↔ FHIR: map, validate, move between servers, and reproduce the paper.

    Start with `fhir-msc demo`: it maps the synthetic NCT04288102 cohort into an
    embedded store, validates it, round-trips it, analyses it and checks the published
    results. Then: `map` / `unmap` / `validate` for files, `push` / `pull` / `sync` /
    `hospital-pull` for servers, `analyze` / `verify` for the statistics.
    """


@main.command("map")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write into this NDJSON store directory; existing resources are updated by id.")
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write one transaction Bundle JSON file instead.")
@click.option("--rejects", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where rejected rows go (default: STORE/rejects or BUNDLE.rejects).")
@_version_option
@_study_option
@_json_option
def map_command(source: Path, store: Path | None, bundle: Path | None, rejects: Path | None,
                fhir_version: str, study_path: Path, as_json: bool) -> None:
    """Map the trial tables in SOURCE (dm.csv, ex.csv, findings) to FHIR.

    Bad rows are reported (file, row, column, value, what to do) and copied to the
    rejects directory with a REJECT_REASON column; the rest are mapped. Fix the rejects
    files and replay them: `fhir-msc map STORE/rejects --store STORE`. Exit code 3 means
    some rows were rejected.
    """
    study = load_study(study_path)
    with _progress("mapping", not as_json) as tick:
        result = jobs.map_tables(study, source, store=store, bundle=bundle, version=get_version(fhir_version),
                                 rejects=rejects, progress=tick)
    if as_json:
        _print_json(result)
    else:
        _echo_map(result, store or bundle)
    if result.rejections:
        sys.exit(ExitCode.REJECTED)


def _echo_map(result: Any, target: Path) -> None:
    for rejection in result.rejections[:MAX_SHOWN]:
        click.echo(f"rejected: {rejection}", err=True)
    if len(result.rejections) > MAX_SHOWN:
        click.echo(f"rejected: … and {len(result.rejections) - MAX_SHOWN} more (all in the rejects files)", err=True)
    counts = ", ".join(f"{t} {n}" for t, n in result.counts.items())
    click.echo(f"mapped {result.total} resources into {target}: {counts or 'nothing'}")
    if result.rejects_files:
        folder = result.rejects_files[0].parent
        click.echo(f"{len(result.rejections)} row(s) rejected; fix them in {folder}/ and replay with:\n"
                   f"  fhir-msc map {folder} --store {target}")


@main.command("unmap")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Directory for the trial tables (created if missing).")
@_study_option
@_json_option
def unmap_command(source: Path, out: Path, study_path: Path, as_json: bool) -> None:
    """Turn the FHIR resources in SOURCE (store directory or bundle file) back into trial tables."""
    result = jobs.unmap(load_study(study_path), source, out)
    if as_json:
        _print_json(result)
        return
    click.echo(f"wrote {out}: " + ", ".join(f"{name} {rows} rows" for name, rows in result.rows.items()))
    for line in result.skipped[:MAX_SHOWN]:
        click.echo(f"skipped: {line}", err=True)


@main.command("validate")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@_version_option
@_json_option
def validate_command(source: Path, fhir_version: str, as_json: bool) -> None:
    """Validate every resource in SOURCE (store directory or bundle file) with fhir.resources.

    Exit code 5 means at least one resource is invalid.
    """
    with _progress("validating", not as_json) as tick:
        report = jobs.validate(source, get_version(fhir_version), tick)
    if as_json:
        _print_json(report)
    else:
        _echo_validation(report)
    if not report.ok:
        sys.exit(ExitCode.INVALID)


def _echo_validation(report: Any) -> None:
    total = sum(report.checked.values())
    for line in report.errors:
        click.echo(f"invalid: {line}", err=True)
    status = "all valid" if report.ok else f"{report.error_count} problem(s)"
    click.echo(f"FHIR {report.version}: {total} resources checked, {status}")


@main.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("fhir-msc-demo"),
              show_default=True, metavar="DIR", help="Where the store, bundle and round-trip files go.")
@_study_option
@_json_option
def demo_command(workdir: Path, study_path: Path, as_json: bool) -> None:
    """Run the whole job on the synthetic cohort: map, validate (R4, R5), round-trip, export, analyze, verify.

    Writes the store, a transaction bundle and the report (HTML, forest plot PNG, CSV)
    under --workdir and prints where.
    """
    study: Study = load_study(study_path)
    with _progress("demo", not as_json) as tick:
        result = jobs.demo(study, workdir.resolve(), progress=tick)
    if as_json:
        _print_json(result)
    else:
        _echo_demo(result)
    if not all(r.ok for r in result.validation.values()):
        sys.exit(ExitCode.INVALID)
    if not result.roundtrip.lossless or result.reproduced < len(result.verification):
        sys.exit(ExitCode.MISMATCH)


_source_option = click.option(
    "--store", "source", type=click.Path(exists=True, path_type=Path), metavar="PATH",
    help="Embedded store directory or Bundle JSON file to analyse.")
_server_option = click.option(
    "--server", metavar="URL", envvar="FHIR_MSC_SERVER",
    help="FHIR server base URL (also FHIR_MSC_SERVER); credentials come from the environment or --config.")


_required_server_option = click.option("--server", metavar="URL", envvar="FHIR_MSC_SERVER", required=True,
                                       help="FHIR server base URL (also FHIR_MSC_SERVER).")


def _server_options(command):
    """--ca-bundle, --timeout and --config: how to reach a server."""
    for option in (
        click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
                     help="CA certificates that sign the server's TLS certificate; verification is always on."),
        click.option("--timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
                     help="Timeout for each HTTP request."),
        click.option("--config", type=click.Path(exists=True, dir_okay=False), envvar="FHIR_MSC_CONFIG", metavar="YAML",
                     help="Config file with credentials (keys like FHIR_MSC_TOKEN), mode 600; else the environment."),
    ):
        command = option(command)
    return command


_state_option = click.option(
    "--state", type=click.Path(file_okay=False, path_type=Path), default=Path(".fhir-msc"), show_default=True,
    envvar="FHIR_MSC_STATE", metavar="DIR", help="Directory for the sync journal and lock.")


def _client(server: str, config: str | None, ca_bundle: str | None, timeout: float):
    return connect(server, config=config, ca_bundle=ca_bundle, timeout=timeout)


def _source(source: Path | None, server: str | None, config, ca_bundle, timeout):
    if (source is None) == (server is None):
        raise click.UsageError("give exactly one of --store PATH or --server URL")
    return source if source is not None else _client(server, config, ca_bundle, timeout)


@main.command("analyze")
@_source_option
@_server_option
@_server_options
@click.option("--visit", "visits", multiple=True, metavar="CODE", help="Only this visit (e.g. M36); repeatable. Other visits are not read.")
@click.option("--outcome", "outcomes", multiple=True, metavar="CODE", help="Only this outcome (e.g. SF36GH); repeatable.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format of the between-arm table.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="PNG",
              help="Also write a forest plot of the effects to this PNG file.")
@_study_option
def analyze_command(source: Path | None, server: str | None, ca_bundle: str | None, timeout: float, config: str | None,
                    visits: tuple[str, ...], outcomes: tuple[str, ...], fmt: str, plot: Path | None, study_path: Path) -> None:
    """Compare the arms for every outcome and visit in the FHIR data at --store or --server.

    Each row gives n and a summary per arm, the effect the study definition plans for the
    outcome type (odds ratio with Woolf CI, difference of means with pooled t CI, …),
    its 95% CI, p, and the method that computed it.
    """
    study = load_study(study_path)
    comparisons = jobs.analyze(study, _source(source, server, config, ca_bundle, timeout),
                               list(visits) or None, list(outcomes) or None)
    click.echo(render(comparison_table(comparisons), fmt))
    if plot:
        forest_plot(comparisons, plot, study.study.identifier.value)
        click.echo(f"forest plot: {plot}", err=True)


@main.command("verify")
@_source_option
@_server_option
@_server_options
@_study_option
@_json_option
def verify_command(source: Path | None, server: str | None, ca_bundle: str | None, timeout: float, config: str | None,
                   study_path: Path, as_json: bool) -> None:
    """Recompute every published result of the study definition from the FHIR data at --store or --server.

    Compares at the paper's precision and exits 6 if any result does not match.
    """
    checks = jobs.verify(load_study(study_path), _source(source, server, config, ca_bundle, timeout))
    table = verification_table(checks)
    click.echo(render(table, "json") if as_json else render(table, "table"))
    matched = sum(c.matches for c in checks)
    if not as_json:
        click.echo(f"reproduced {matched}/{len(checks)} published results")
    if matched < len(checks):
        sys.exit(ExitCode.MISMATCH)


def _echo_demo(result: jobs.DemoResult) -> None:
    click.echo(f"store: {result.store}")
    click.echo(f"bundle: {result.bundle}")
    note = " (synthetic data, tagged HTEST)" if result.mapped.synthetic else ""
    click.echo(f"mapped {result.mapped.total} resources{note}:")
    for resource_type, count in result.mapped.counts.items():
        click.echo(f"  {resource_type:<26}{count:>6}")
    click.echo("infusions: " + ", ".join(f"{t} {n}" for t, n in result.infusions.items()))
    click.echo("subjects by arm: " + ", ".join(f"{arm} {n}" for arm, n in result.subjects_by_arm.items()))
    for version, report in result.validation.items():
        click.echo(f"validation {version}: {sum(report.checked.values())} resources, "
                   + ("all valid" if report.ok else f"{report.error_count} problem(s)"))
    if result.roundtrip.lossless:
        click.echo("round trip: lossless (tables → FHIR → tables and FHIR → tables → FHIR are equal)")
    else:
        click.echo("round trip: LOSSY")
        for line in result.roundtrip.differences:
            click.echo(f"  {line}")
    click.echo(render(verification_table(result.verification), "table"))
    click.echo(f"report: {result.report['html']} (forest plot {result.report['png'].name}, table {result.report['csv'].name})")
    click.echo(f"reproduced {result.reproduced}/{len(result.verification)} published results")


def _exit_for(ok: bool) -> None:
    if not ok:
        sys.exit(ExitCode.PARTIAL)


def _echo_notes(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _echo_push(result) -> None:
    _echo_notes(result.notes)
    if result.mode == "verify":
        click.echo(f"verified {result.target}: the server holds {result.unchanged} of the {result.total} resources, "
                   f"lacks {len(result.failed)}; {result.requests} requests, {result.seconds:.1f}s")
        for line in result.failed[:MAX_SHOWN]:
            click.echo(f"lacking: {line}", err=True)
        _echo_more(result.failed)
        if result.failed:
            click.echo("send them with `fhir-msc push` (what the journal records is checked and sent again), "
                       "or everything with `fhir-msc push --full`", err=True)
        return
    verb = "would push" if result.mode == "dry-run" else "pushed"
    restored = f" (of which {result.restored} the server lacks although the journal records them)" \
        if result.restored and result.mode == "dry-run" else ""
    click.echo(f"{verb} to {result.target} (method {result.method}, bundles of ≤{result.bundle_size}): "
               f"{result.total} resources: created {result.created}, updated {result.updated}{restored}, "
               f"unchanged {result.unchanged}, failed {len(result.failed)}")
    if result.mode != "dry-run":
        rate = (result.created + result.updated) / result.seconds if result.seconds else 0
        held = f"holds all {result.checked} it accepted" if result.ok else "does not hold everything: see failed"
        again = f"; {result.restored} it lacked although the journal recorded them were sent again" if result.restored else ""
        click.echo(f"server check: {result.target} {held}{again}; {result.bundles} bundles, {result.requests} requests, "
                   f"{result.retries} retries, {result.seconds:.1f}s, {rate:.0f} resources/s")
    for line in result.failed[:MAX_SHOWN]:
        click.echo(f"failed: {line}", err=True)
    _echo_more(result.failed)


def _echo_more(lines: list[str]) -> None:
    if len(lines) > MAX_SHOWN:
        click.echo(f"… and {len(lines) - MAX_SHOWN} more (all in --json)", err=True)


def _echo_pull(result, store: Path) -> None:
    _echo_notes(result.notes)
    counts = ", ".join(f"{t} {n}" for t, n in result.counts.items()) or "nothing new"
    since = f" (changes since {result.since})" if result.since else ""
    click.echo(f"pulled from {result.source} into {store}{since}: {counts}; {result.requests} requests, {result.seconds:.1f}s")
    if result.removed:
        click.echo("removed (deleted on the server): " + ", ".join(f"{t} {n}" for t, n in result.removed.items()))
    if result.invalid:
        click.echo(f"not stored, invalid: {sum(result.invalid.values())} resource(s)", err=True)
        for reason, count in sorted(result.invalid.items(), key=lambda item: -item[1])[:MAX_SHOWN]:
            click.echo(f"  {count} × {reason}", err=True)
        _echo_more(list(result.invalid))


_server_version_option = click.option(
    "--fhir-version", type=click.Choice(VERSIONS, case_sensitive=False), default=None,
    help="FHIR version of the server (default: the fhirVersion of its CapabilityStatement, else R4).")
_method_option = click.option(
    "--method", type=click.Choice(METHODS), default="auto", show_default=True,
    help="id: PUT Type/id; conditional: PUT Type?identifier=…; auto: id if the server allows update-as-create "
         "(needs a CapabilityStatement).")


@main.command("push")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@_required_server_option
@click.option("--bundle-size", type=click.IntRange(1, 1000), default=50, show_default=True, metavar="N",
              help="Resources per transaction Bundle; halved automatically if the server rejects a bundle.")
@_method_option
@click.option("--dry-run", is_flag=True,
              help="Send nothing: say what would be created, updated or left unchanged, checking the server for what the journal records.")
@click.option("--verify", is_flag=True,
              help="Send nothing: check that the server holds every resource of SOURCE and list what it lacks (exit 7 if any).")
@click.option("--full", is_flag=True, help="Send every resource, whatever the journal records.")
@_server_version_option
@_state_option
@_server_options
@_study_option
@_json_option
def push_command(source: Path, server: str, bundle_size: int, method: str, dry_run: bool, verify: bool, full: bool,
                 fhir_version: str | None, state: Path, ca_bundle: str | None, timeout: float, config: str | None,
                 study_path: Path, as_json: bool) -> None:
    """Push SOURCE (store directory, bundle file or trial tables) to a FHIR server.

    Idempotent and resumable: the journal in --state records what reached the server, so a
    rerun sends only what is new or changed. Every push then checks that the server holds
    each resource of SOURCE, sends again what it lacks (a restarted or wiped server) and
    checks once more. Exit 0 only if the server holds everything, 7 if some resources
    failed or are still missing, 8 if the server could not be used.
    """
    if dry_run + verify + full > 1:
        raise click.UsageError("give at most one of --dry-run, --verify and --full")
    mode = "dry-run" if dry_run else "verify" if verify else "full" if full else "push"
    client = _client(server, config, ca_bundle, timeout)
    with _progress("pushing", not as_json) as tick:
        result = jobs.push(load_study(study_path), source, client, state, bundle_size=bundle_size, method=method,
                           mode=mode, fhir_version=fhir_version, progress=tick)
    _print_json(result) if as_json else _echo_push(result)
    _exit_for(result.ok)


@main.command("pull")
@_required_server_option
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Store directory to pull into (created if missing).")
@click.option("--full", is_flag=True, help="Pull everything, not just what changed since the last pull.")
@_server_version_option
@_state_option
@_server_options
@_study_option
@_json_option
def pull_command(server: str, store: Path, full: bool, fhir_version: str | None, state: Path, ca_bundle: str | None,
                 timeout: float, config: str | None, study_path: Path, as_json: bool) -> None:
    """Pull the study's ResearchStudy, subjects, Patients, visits, infusions and Observations from a server.

    Incremental by default (_lastUpdated since the last successful pull, in the server's clock).
    Resources the server held at the last pull and has deleted since are removed from the
    store. Resources that fail validation are not stored: they are counted by reason and
    the exit code is 7.
    """
    client = _client(server, config, ca_bundle, timeout)
    with _progress("pulling", not as_json) as tick:
        result = jobs.pull(load_study(study_path), client, store, state, full=full, fhir_version=fhir_version, progress=tick)
    _print_json(result) if as_json else _echo_pull(result, store)
    _exit_for(result.ok)


@main.command("sync")
@click.option("--from", "source", required=True, metavar="URL|DIR", help="Where the data comes from: a server URL or a store/tables directory.")
@click.option("--to", "target", required=True, metavar="URL|DIR", help="Where it goes: a server URL or a store directory.")
@click.option("--bundle-size", type=click.IntRange(1, 1000), default=50, show_default=True, metavar="N",
              help="Resources per transaction Bundle when pushing.")
@_method_option
@_server_version_option
@_state_option
@_server_options
@_study_option
@_json_option
def sync_command(source: str, target: str, bundle_size: int, method: str, fhir_version: str | None, state: Path,
                 ca_bundle: str | None, timeout: float, config: str | None, study_path: Path, as_json: bool) -> None:
    """Bring --to up to date with --from: store → server, server → store, or server → server.

    Safe from cron: a lock in --state stops concurrent runs (exit 9), only changes move, the
    target server is checked to hold everything afterwards, and the exit code says success
    (0), partial failure (7) or failure (8).
    """
    with _progress("syncing", not as_json) as tick:
        result = jobs.sync(load_study(study_path), source, target, state,
                           lambda url: _client(url, config, ca_bundle, timeout), bundle_size=bundle_size,
                           method=method, fhir_version=fhir_version, progress=tick)
    if as_json:
        _print_json(result)
    else:
        if result.pulled:
            _echo_pull(result.pulled, Path(target) if not jobs.is_server(target) else state / "staging")
        if result.pushed:
            _echo_push(result.pushed)
    _exit_for(result.ok)


@main.command("hospital-pull")
@click.option("--server", metavar="URL", envvar="FHIR_MSC_HOSPITAL_SERVER", required=True,
              help="The hospital's FHIR base URL (also FHIR_MSC_HOSPITAL_SERVER).")
@click.option("--enrollment", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, metavar="CSV",
              help="USUBJID,PATIENT_IDENTIFIER (system|value) for each enrolled subject.")
@click.option("--store", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="The study store: subjects and start dates come from it, and the new findings go into it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("hospital-findings"),
              show_default=True, metavar="DIR", help="Where the findings tables are written for review.")
@_server_options
@_study_option
@_json_option
def hospital_pull_command(server: str, enrollment: Path, store: Path, out: Path, ca_bundle: str | None, timeout: float,
                          config: str | None, study_path: Path, as_json: bool) -> None:
    """Fetch enrolled patients' results from a hospital FHIR server and add them at the right study visits.

    Results are found by the standard codes of the study's outcomes, converted to the
    study's units and placed by the visit windows of the study definition; everything not
    used is counted by reason.
    """
    client = _client(server, config, ca_bundle, timeout)
    result = jobs.hospital_pull(load_study(study_path), client, enrollment, store, out)
    if as_json:
        _print_json(result)
        return
    click.echo(f"hospital {server}: {result.patients_found}/{result.enrolled} enrolled patients found; "
               f"{len(result.findings)} findings written to {out} and mapped into {store}")
    for reason, count in sorted(result.skipped.items()):
        click.echo(f"  not used: {count} × {reason}")
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
