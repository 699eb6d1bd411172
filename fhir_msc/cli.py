"""The ``fhir-msc`` command line: parse, call fhir_msc.jobs, print.

Exit codes (see fhir_msc.errors.ExitCode): 0 success, 1 internal error, 2 bad usage,
3 some input rows rejected, 4 input unusable, 5 FHIR validation failed, 6 a round trip
or verification did not reproduce its source, 7 some resources failed on a server, 8 the
server could not be used, 9 another job holds the store or --state, 10 a pull kept local data
that differs from the server's, 11 a file or directory could not be read or written, 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

# Only what the options need is imported here; the jobs, the formatting and what they load (pandas, DuckDB, the
# HTTP client, the study model) are imported inside the commands, so that --help loads click and the options alone.
from .account import Account
from .analysis.options import DEFAULT_ENGINE, DEFAULT_VIEW_ENGINE, ENGINES, EXPORT_FORMATS, FORMATS, VIEW_ENGINES
from .errors import ExitCode, FhirMscError, NoAccess
from .fhir.versions import VERSIONS, get_version
from .progress import Progress
from .server.options import HOSPITAL_PREFER, METHODS, PREFER
from .study.shipped import DEFAULT_STUDY

if TYPE_CHECKING:
    from tqdm import tqdm

    from . import jobs
    from .fhir.validate import ValidationReport
    from .study.definition import Study

MAX_SHOWN = 20


class _TakesGlobalOptions(click.Command):
    """A command that takes the global options (-q, -v, --progress) after its name too, with the same meaning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


class _Group(_TakesGlobalOptions, click.Group):
    """A group of commands (``view``): it and each of its commands take the global options."""

    command_class = _TakesGlobalOptions


class _Cli(_TakesGlobalOptions, click.Group):
    """Turns FhirMscError into one line on stderr and its exit code: no stack traces for user errors. A file or
    directory fhir-msc may not read or write (permission denied, a read-only file system) is one line too (exit 11).

    With --json, a failure (a FhirMscError, a usage error, Ctrl-C) is also ``{"error": {"code", "message"}}`` on
    stdout.
    Ctrl-C ends with what was done, how to resume, and exit code 130.
    """

    command_class = _TakesGlobalOptions
    group_class = _Group

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        as_json = _asks_for_json(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if as_json:
                _print_error(exc.exit_code, exc.format_message())
            raise
        ctx.ensure_object(_Output).as_json = as_json
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        output = ctx.ensure_object(_Output)
        try:
            return super().invoke(ctx)
        except FhirMscError as exc:
            _exit_with(ctx, exc)
        except OSError as exc:
            denied = NoAccess.of(exc)
            if denied is None:
                raise
            _exit_with(ctx, denied)
        except click.UsageError as exc:
            if output.as_json:
                _print_error(exc.exit_code, exc.format_message())
            raise
        except KeyboardInterrupt:
            done, resume = output.bar.done_so_far() if output.bar else "", output.resume or _RERUN
            click.echo(f"\nfhir-msc: interrupted{done}.", err=True)
            click.echo(f"fhir-msc: {resume}", err=True)
            if output.as_json:
                _print_error(int(ExitCode.INTERRUPTED), f"interrupted{done}: {resume}")
            ctx.exit(int(ExitCode.INTERRUPTED))


def _exit_with(ctx: click.Context, error: FhirMscError) -> NoReturn:
    """End with the error's one line on stderr (and its --json document on stdout) and its exit code."""
    click.echo(f"fhir-msc: error: {error}", err=True)
    if ctx.ensure_object(_Output).as_json:
        _print_error(int(error.exit_code), str(error))
    ctx.exit(int(error.exit_code))


def _asks_for_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options of a command line (those before a ``--``)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _print_error(code: int, message: str) -> None:
    """A failure as the --json document ``{"error": {"code": EXIT_CODE, "message": …}}`` on stdout."""
    _print_json({"error": {"code": code, "message": message}})


class _Bar(Progress):
    """A job's progress as a tqdm bar on stderr (total, percent, ETA) when shown; remembers how far it got."""

    def __init__(self, shown: bool):
        self.active = shown
        self.label, self.total, self.unit, self.done = "", None, "", 0
        self._bar: tqdm | None = None

    def start(self, label: str, total: int | None = None, unit: str = "resources") -> None:
        super().start(label, total, unit)
        self.close()
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        if self.active:
            from tqdm import tqdm

            in_bytes = unit == "B"
            self._bar = tqdm(desc=label, total=total, unit="B" if in_bytes else f" {unit}", unit_scale=in_bytes,
                             unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def done_so_far(self) -> str:
        """`` while LABEL: N of TOTAL UNIT done (P%)``, or empty before the first stage."""
        if not self.label:
            return ""
        if self.unit == "B":
            done = f"{self.done / 2**20:,.1f} of {self.total / 2**20:,.1f} MiB" if self.total else f"{self.done / 2**20:,.1f} MiB"
        else:
            done = f"{self.done:,} of {self.total:,} {self.unit}" if self.total is not None else f"{self.done:,} {self.unit}"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f" while {self.label}: {done} done{percent}"


@dataclasses.dataclass
class _Output:
    """The global output options, and the current job's progress and resume hint."""

    quiet: bool = False
    verbose: bool = False
    progress: bool | None = None  # None: shown when stderr is a terminal
    as_json: bool = False  # --json given: failures are JSON on stdout too
    bar: _Bar | None = None
    resume: str = ""


def _output() -> _Output:
    ctx = click.get_current_context(silent=True)
    return (ctx.find_object(_Output) if ctx else None) or _Output()


def _info(message: str, err: bool = False) -> None:
    """A line that is neither an error nor the result: left out with --quiet."""
    if not _output().quiet:
        click.echo(message, err=err)


class _LogToStderr(logging.Handler):
    """Log records as ``fhir-msc: …`` lines on the current stderr (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"fhir-msc: {self.format(record)}", err=True)


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
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN and infinities are not JSON
    return value


def _print_json(value: Any) -> None:
    """Result objects as JSON on stdout: dataclasses as objects, paths as strings, NaN as null.

    Text holding bytes that were not valid in its input (kept as lone surrogates) is written
    with those as ``\\udcXX`` escapes, so the output is always valid UTF-8 JSON.
    """
    text = json.dumps(_to_jsonable(value), indent=2, ensure_ascii=False, allow_nan=False)
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _echo_cut(prefix: str, lines: list[Any], total: int | None = None, where: str = "") -> None:
    """The first MAX_SHOWN lines on stderr, then "… and N more" for the rest of ``total`` (default: all lines)."""
    total = len(lines) if total is None else total
    for line in lines[:MAX_SHOWN]:
        click.echo(f"{prefix}: {line}", err=True)
    if total > min(len(lines), MAX_SHOWN):
        click.echo(f"{prefix}: … and {total - min(len(lines), MAX_SHOWN)} more{where}", err=True)


@contextmanager
def _progress(enabled: bool, resume: str) -> Iterator[_Bar]:
    """The job's progress: a bar on stderr on a terminal (or with --progress), never with --quiet.

    ``resume`` tells the user what to do if they interrupt the job.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    output = _output()
    shown = enabled and not output.quiet and (output.progress if output.progress is not None else sys.stderr.isatty())
    output.bar, output.resume = _Bar(shown), resume
    try:
        with logging_redirect_tqdm([logging.getLogger("fhir_msc")]) if shown else nullcontext():
            yield output.bar
    finally:
        output.bar.close()


_RERUN = "nothing was changed: rerun the same command"


_study_option = click.option(
    "--study", "study_path", type=click.Path(dir_okay=False, path_type=Path), envvar="FHIR_MSC_STUDY", metavar="YAML",
    help="Study definition YAML file, also read from FHIR_MSC_STUDY. Default: the one the store records (map and pull "
         "record theirs), else the bundled NCT04288102 definition, with a note; another study's is refused.")
_demo_study_option = click.option(
    "--study", "study_path", type=click.Path(dir_okay=False, path_type=Path), envvar="FHIR_MSC_STUDY", metavar="YAML",
    help="Study definition YAML file of --tables, also read from FHIR_MSC_STUDY. Default: the bundled NCT04288102 "
         "definition.")


def _study(study_path: Path | None, store: Path | None = None, *, recording: bool = False) -> Study:
    """The study definition of a command on ``store`` (see jobs.choose_study); its notes on stderr (not with --quiet)."""
    from . import jobs

    choice = jobs.choose_study(study_path, store, recording=recording)
    for note in choice.notes:
        _info(f"note: {note}", err=True)
    return choice.study


_version_option = click.option(
    "--fhir-version", type=click.Choice(VERSIONS, case_sensitive=False), default="R4", show_default=True,
    help="FHIR version to write or validate against.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")


def _global_option(ctx: click.Context, param: click.Parameter, value: bool | None) -> None:
    """Record -q, -v or --progress/--no-progress, given before or after the command (the last one given wins)."""
    output = ctx.ensure_object(_Output)
    if value is None or (value is False and param.name != "progress"):
        return  # not given
    starts_logging = param.name == "verbose" and not output.verbose
    setattr(output, str(param.name), value)
    if output.quiet and output.verbose:
        raise click.UsageError("--quiet and --verbose contradict each other: give one")
    if starts_logging:  # until the whole command line is done, even if a later option is refused
        logger, handler = logging.getLogger("fhir_msc"), _LogToStderr()
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        ctx.find_root().call_on_close(lambda: (logger.removeHandler(handler), logger.setLevel(logging.NOTSET)))


def _global_options() -> list[click.Option]:
    return [
        click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_global_option,
                     help="Print only errors and the result."),
        click.Option(["--verbose", "-v"], is_flag=True, expose_value=False, callback=_global_option,
                     help="Log each step and HTTP request on stderr (never credentials)."),
        click.Option(["--progress/--no-progress"], default=None, expose_value=False, callback=_global_option,
                     help="Show or hide the progress bar (total, percent, ETA) on stderr; default: shown on a terminal."),
    ]


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fhir-msc")
def main() -> None:
    """Clinical-trial tables ↔ FHIR: map, validate, move between servers, and reproduce the paper.

    Start with `fhir-msc demo`: it maps the synthetic NCT04288102 cohort into an
    embedded store, validates it, round-trips it, analyses it and checks the published
    results. `init DIR` starts a study of your own (`check` finds the mistakes in its file).
    Then: `map` / `unmap` / `validate` for files, `push` / `pull` / `sync` /
    `hospital-pull` for servers, `analyze` / `verify` for the statistics. Ctrl-C stops a
    job, says what was done and how to resume, and exits with 130.

    The options below (-q, -v, --progress) may also follow the command, e.g.
    `fhir-msc analyze --store DIR -q`, with the same meaning. With --json, a failure
    prints {"error": {"code": EXIT_CODE, "message": ...}} on stdout too.

    Exit codes, the same for every command: 0 ok, 1 internal error (a bug), 2 bad usage,
    3 some rows rejected, 4 input or study definition unusable, 5 FHIR validation failed,
    6 round trip lossy or a published result not reproduced, 7 some resources failed on a
    server, 8 server unusable, 9 another job is writing the same store or --state, 10 a
    pull kept local data that differs from the server's, 11 a file or directory could not be
    read or written (permissions, a read-only file system), 130 interrupted.
    """


@main.command("map")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), metavar="DIR",
              help="Write into this NDJSON store directory; resources are created, updated or left unchanged by id.")
@click.option("--bundle", type=click.Path(path_type=Path), metavar="FILE",
              help="Write one transaction Bundle JSON file instead.")
@click.option("--rejects", type=click.Path(path_type=Path), metavar="DIR",
              help="Where rejected rows go (default: STORE/rejects or BUNDLE.rejects); other files there are kept.")
@_version_option
@_study_option
@_json_option
def map_command(source: Path, store: Path | None, bundle: Path | None, rejects: Path | None,
                fhir_version: str, study_path: Path | None, as_json: bool) -> None:
    """Map the trial tables in SOURCE (dm.csv, ex.csv, findings; names in any case) to FHIR.

    Every row read is mapped or rejected: bad rows are reported (file, row, column, value,
    what to do) and kept in the rejects directory with a REJECT_REASON column. Fix them
    there and replay: `fhir-msc map STORE/rejects --store STORE`. Columns the study does not
    read are named in the account. A store records the study definition: later commands on
    it need no --study, and refuse another study's. Mapping the same tables again changes
    nothing. Exit code 3 means some rows were rejected; 4 that a whole table was unusable
    (wrong header, empty): its rows are in the rejects, the other tables were mapped; 2 that
    the store records another study; 9 that another job is writing the store; 11 that a
    directory cannot be written.
    """
    from . import jobs

    study = _study(study_path, store, recording=True)
    with _progress(not as_json, "mapping upserts by id and rejects are written only when a run completes: "
                                "rerun the same command") as progress:
        result = jobs.map_tables(study, source, store=store, bundle=bundle, version=get_version(fhir_version),
                                 rejects=rejects, progress=progress)
    if as_json:
        _print_json(result)
    else:
        _echo_map(result, source, store, bundle, rejects, study)
    if result.unusable_files:
        sys.exit(ExitCode.BAD_INPUT)
    if result.rejections:
        sys.exit(ExitCode.REJECTED)


def _echo_map(result: Any, source: Path, store: Path | None, bundle: Path | None, rejects: Path | None,
              study: Study) -> None:
    _echo_notes([*result.recovered, *result.notes])
    _echo_cut("rejected", result.rejections, where=" (all in the rejects files)")
    target = store or bundle
    counts = ", ".join(f"{t} {n}" for t, n in result.counts.items())
    click.echo(f"mapped {result.total} resources into {target}: {counts or 'nothing'}")
    if result.changes:
        parts = []
        for kind in ("created", "updated", "unchanged"):
            by_type = {t: getattr(c, kind) for t, c in result.changes.items() if getattr(c, kind)}
            detail = f" ({', '.join(f'{t} {n}' for t, n in by_type.items())})" if by_type else ""
            parts.append(f"{kind} {sum(by_type.values())}{detail}")
        _info(f"in the store: {'; '.join(parts)}")
    if result.accounts:
        _info("rows read = mapped + rejected: " + "; ".join(
            f"{Path(a.file).name} {a.read} = {a.mapped} + {a.rejected}{' (file unusable)' if a.unusable else ''}"
            + (f" (columns not read: {', '.join(f'{c} with {n} value(s)' for c, n in a.unread_columns.items())})"
               if a.unread_columns else "")
            for a in result.accounts))
    if result.rejects_files:
        folder = result.rejects_files[0].parent
        files = ", ".join(f.name for f in result.rejects_files)
        what = (f"{result.rows_rejected} row(s) rejected" if result.rows_rejected
                else "rows rejected by earlier runs are waiting")
        if store:  # the store holds their subjects and knows its study: the rejects replay on their own
            again = ["map", str(folder), "--store", str(store), *(["--rejects", str(rejects)] if rejects else [])]
            _info(f"{what}; fix them in {folder}/ ({files}) and replay with:\n  {_command(again)}")
        else:  # a bundle is written whole: the corrected tables are mapped again
            given = [] if study.file in (None, DEFAULT_STUDY.resolve()) else ["--study", str(study.file)]
            again = ["map", str(source), "--bundle", str(bundle), *(["--rejects", str(rejects)] if rejects else []),
                     *given]
            _info(f"{what}, each with its reason in {folder}/ ({files}); fix them in {source} and map it again "
                  f"(the bundle is written whole) with:\n  {_command(again)}")


def _command(argv: list[str]) -> str:
    """A fhir-msc command line as a shell reads it back (paths quoted where they need it)."""
    return shlex.join(["fhir-msc", *argv])


@main.command("unmap")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Directory for the trial tables (created if missing).")
@click.option("--format", "fmt", type=click.Choice(["csv", "xpt", "json"]), default="csv", show_default=True,
              help="Table file format: CSV, SAS XPORT v5 (.xpt) or CDISC Dataset-JSON v1.1 (.json).")
@_study_option
@_json_option
def unmap_command(source: Path, out: Path, fmt: str, study_path: Path | None, as_json: bool) -> None:
    """Turn the FHIR resources in SOURCE (store directory or bundle file) back into trial tables.

    Every resource read is used or skipped, by reason; the account is printed (and is in
    --json). Exit code 4 means SOURCE or the study definition could not be read.
    """
    from . import jobs
    from .fhir.unmapping import NOT_READ

    study = _study(study_path, source)
    with _progress(not as_json, f"the tables in {out} may be incomplete: rerun the same command") as progress:
        result = jobs.unmap(study, source, out, progress, fmt)
    if as_json:
        _print_json(result)
        return
    click.echo(f"wrote {out}: " + ", ".join(f"{name} {rows} rows" for name, rows in result.rows.items()))
    click.echo(f"read {result.read} resources: {result.read - result.skipped} used, {result.skipped} skipped")
    for resource_type, account in result.accounts.items():
        click.echo(f"  {resource_type}: {account.describe()}")
    for resource_type, account in result.accounts.items():  # types no row comes from are in the summary only
        _echo_skipped(f"skipped: {resource_type}", account, leave_out=tuple(NOT_READ.values()))
    _echo_not_used(result.not_used)


def _echo_not_used(lines: list[str]) -> None:
    """Input that holds no resource (bundle entries without one), on stderr."""
    for line in lines:
        click.echo(f"not used: {line}", err=True)


def _echo_skipped(label: str, account: Account, leave_out: tuple[str, ...] = ()) -> None:
    """One line per reason on stderr: how many, the first few named, and how many more."""
    for reason, count in account.skipped.items():
        if reason in leave_out:
            continue
        named = account.examples.get(reason, [])
        more = f" … and {count - len(named)} more" if named and count > len(named) else ""
        click.echo(f"{label} {count} × {reason}" + (f": {', '.join(named)}{more}" if named else ""), err=True)


def _echo_observations(account: Account) -> None:
    """The Observations' account on stderr when any was dropped for a reason other than the visits asked for."""
    from .fhir.unmapping import NOT_ASKED

    if any(reason != NOT_ASKED for reason in account.skipped):
        click.echo(f"Observations: {account.describe('in the frame')}", err=True)
        _echo_skipped("  dropped:", account, leave_out=(NOT_ASKED,))


@main.command("validate")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--fhir-version", type=click.Choice(("auto", *VERSIONS), case_sensitive=False), default="auto",
              show_default=True,
              help="FHIR version to validate against; auto reads it from SOURCE (e.g. ResearchSubject.subject is R5).")
@_json_option
def validate_command(source: Path, fhir_version: str, as_json: bool) -> None:
    """Validate every resource in SOURCE (store directory or bundle file): its fhir.resources model, then FHIR's JSON rules, its string rule (no control characters) and the obs-6/obs-7 invariants.

    Exit code 5 means at least one resource is invalid; 4 that SOURCE could not be read.
    """
    from . import jobs

    if fhir_version.lower() == "auto":
        version, evidence = jobs.detect_version(source)
        _info(f"FHIR {version.name} detected ({evidence})", err=True)
    else:
        version = get_version(fhir_version)
    with _progress(not as_json, _RERUN) as progress:
        report = jobs.validate(source, version, progress)
    if as_json:
        _print_json(_validation_json(report))
    else:
        _echo_validation(report)
    if not report.ok:
        sys.exit(ExitCode.INVALID)


def _validation_json(report: ValidationReport) -> dict[str, Any]:
    """The ``validate`` document (schema fhir_msc/schemas/validate.schema.json)."""
    return {"version": report.version, "ok": report.ok, "checked": report.checked,
            "error_count": report.error_count, "errors": _to_jsonable(report.errors), "not_used": list(report.not_used)}


def _echo_validation(report: ValidationReport) -> None:
    total = sum(report.checked.values())
    _echo_cut("invalid", report.errors, report.error_count)
    status = "all valid" if report.ok else f"{report.error_count} problem(s)"
    _echo_not_used(report.not_used)
    click.echo(f"FHIR {report.version}: {total} resources checked, {status}")


@main.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("fhir-msc-demo"),
              show_default=True, metavar="DIR", help="Where the store, bundle, round-trip files and report go.")
@click.option("--tables", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="Trial tables to run on instead of the synthetic cohort shipped with fhir-msc (pair with --study).")
@_demo_study_option
@_json_option
def demo_command(workdir: Path, tables: Path | None, study_path: Path | None, as_json: bool) -> None:
    """Run the whole job on the synthetic cohort: map, validate (R4, R5), round-trip, bundle, analyze, verify.

    Writes the store, a transaction bundle and the report (as `fhir-msc report` writes it)
    under --workdir and prints where; then maps, verifies and reports the two example
    studies shipped with fhir-msc under --workdir/examples, one line each. --tables DIR --study YAML runs it on another
    study's tables. Exit code 5 means a resource failed validation; 6 that the round trip
    lost something (rejected rows included) or a published result was not reproduced.
    """
    from . import jobs
    from .study.definition import load_study

    if tables is not None and study_path is None:
        _info(f"note: no --study given: running {tables} with the bundled definition ({DEFAULT_STUDY}); "
              "pass --study FILE for another study's tables", err=True)
    study: Study = load_study(study_path or DEFAULT_STUDY)
    with _progress(not as_json, f"rerun the same command: the demo starts afresh in {workdir}") as progress:
        result = jobs.demo(study, workdir.resolve(), tables or jobs.DEMO_TABLES, progress=progress, examples=tables is None)
    if as_json:
        _print_json(_demo_json(study, result))
    else:
        _echo_demo(result)
    if not all(r.ok for r in result.validation.values()):
        sys.exit(ExitCode.INVALID)
    if not result.roundtrip.lossless or not result.all_reproduced:
        sys.exit(ExitCode.MISMATCH)  # also when rows were rejected: the round trip lost them


_source_option = click.option(
    "--store", "source", type=click.Path(exists=True, path_type=Path), metavar="PATH",
    help="Embedded store directory or Bundle JSON file to analyse.")
_server_option = click.option(
    "--server", metavar="URL", envvar="FHIR_MSC_SERVER",
    help="FHIR server base URL (also FHIR_MSC_SERVER); credentials come from the environment or --config.")


_required_server_option = click.option("--server", metavar="URL", envvar="FHIR_MSC_SERVER", required=True,
                                       help="FHIR server base URL (also FHIR_MSC_SERVER).")


_INSECURE_HTTP = "fhir_msc.insecure_http"


def _remember_insecure_http(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    ctx.meta[_INSECURE_HTTP] = value  # read by _client, so the commands' signatures need not carry it


def _config_defaults(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """Options that read an environment variable take their default from the config file's key of that name."""
    from .server.client import load_config

    settings = load_config(path)
    defaults = {p.name: settings[p.envvar] for p in ctx.command.params
                if isinstance(p.envvar, str) and p.envvar in settings and p is not param}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _server_options(command):
    """--ca-bundle, --timeout, --config and --insecure-http: how to reach a server."""
    for option in (
        click.option("--insecure-http", is_flag=True, expose_value=False, callback=_remember_insecure_http,
                     help="Allow credentials over plain http to a host other than loopback (127.0.0.1, ::1, localhost); "
                          "without it that is refused with exit 2."),
        click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
                     help="CA certificates that sign the server's TLS certificate; verification is always on."),
        click.option("--timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
                     help="Timeout for each HTTP request."),
        click.option("--config", type=click.Path(exists=True, dir_okay=False), envvar="FHIR_MSC_CONFIG", metavar="YAML",
                     is_eager=True, callback=_config_defaults,
                     help="YAML config file, mode 600 (also FHIR_MSC_CONFIG): credentials (FHIR_MSC_TOKEN, …) and "
                          "defaults for options (server, state, method, study), keyed like the environment variables."),
    ):
        command = option(command)
    return command


_state_option = click.option(
    "--state", type=click.Path(file_okay=False, path_type=Path), default=Path(".fhir-msc"), show_default=True,
    envvar="FHIR_MSC_STATE", metavar="DIR", help="Directory for the sync journal and lock (also FHIR_MSC_STATE).")


def _client(server: str, config: str | None, ca_bundle: str | None, timeout: float):
    from .server.client import connect

    insecure_http = click.get_current_context().meta.get(_INSECURE_HTTP, False)
    return connect(server, config=config, ca_bundle=ca_bundle, timeout=timeout, insecure_http=insecure_http)


def _source(source: Path | None, server: str | None, config, ca_bundle, timeout):
    from_default = click.get_current_context().get_parameter_source("server") in (
        click.core.ParameterSource.ENVIRONMENT, click.core.ParameterSource.DEFAULT_MAP)
    if source is not None and from_default:
        server = None  # --store on the command line wins over a server from the environment or config file
    if (source is None) == (server is None):
        raise click.UsageError("give exactly one of --store PATH or --server URL")
    return source if source is not None else _client(server, config, ca_bundle, timeout)


_engine_option = click.option(
    "--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE, show_default=True,
    help="What builds the analysis frame: duckdb (the embedded default) runs the shipped SQL-on-FHIR "
         "ViewDefinitions and joins them in SQL, spark runs those views in Spark (local mode unless --spark-master) "
         "and joins them in DuckDB, python (the reference engine) reads the resources one by one; all give the same "
         "frame and account.")
_spark_master_option = click.option(
    "--spark-master", metavar="URL",
    help="Spark master URL for --engine spark (default: local mode on this machine).")


@main.command("analyze")
@_source_option
@_server_option
@_server_options
@click.option("--visit", "visits", multiple=True, metavar="CODE", help="Only this visit (e.g. M36); repeatable. Other visits' findings are counted, not analysed "
                   "(with analysis windows every visit is read).")
@click.option("--outcome", "outcomes", multiple=True, metavar="CODE", help="Only this outcome (e.g. SF36GH); repeatable.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format of the between-arm table; json is the same document as --json.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write a forest plot of the effects to this file: PNG, or SVG when it ends in .svg.")
@click.option("--exact-odds-ratio", is_flag=True,
              help="Also compute the exact conditional odds ratio and CI of every binary comparison for --json "
                   "(seconds per comparison at 10,000 subjects per arm, over a minute at 100,000). Without it, only "
                   "where the analysis plan names exact-odds-ratio.")
@_study_option
@_engine_option
@_spark_master_option
@_json_option
def analyze_command(source: Path | None, server: str | None, ca_bundle: str | None, timeout: float, config: str | None,
                    visits: tuple[str, ...], outcomes: tuple[str, ...], fmt: str, plot: Path | None,
                    exact_odds_ratio: bool, study_path: Path | None, engine: str, spark_master: str | None,
                    as_json: bool) -> None:
    """Compare the arms for every outcome and visit in the FHIR data at --store or --server.

    Each row gives n and a summary per arm, the effect the study definition plans for the
    outcome type (odds ratio with Woolf CI, difference of means with pooled t CI, …),
    its 95% CI, p, the Fisher exact and χ² (or Mann-Whitney) p, and the method that
    computed it; a ratio with no events in either arm reads "not estimable". Rows at the plan's
    baseline visit are labelled baseline balance; with analysis.multiplicity the p adjusted in
    its family follows p; a note on stderr says how many comparisons there are. --json gives
    every estimate and p-value as numbers (schema: fhir_msc/schemas/analyze.schema.json);
    the exact conditional odds ratio only with --exact-odds-ratio or where the plan names it
    (otherwise its note says it was not computed).
    Exit code 4 means the data hold no findings of the study's subjects, or --visit or
    --outcome is unknown; 8 that the server could not be used.
    """
    from . import jobs
    from .analysis.adverse_events import incidence_json, incidence_table
    from .analysis.export import analyze_json
    from .analysis.report import comparison_table, comparisons_summary, forest_plot, render

    where = _source(source, server, config, ca_bundle, timeout)
    study = _study(study_path, source)
    unused: list[str] = []
    try:
        with _progress(not as_json, _RERUN) as progress:
            result = jobs.analyze(study, where,
                                  list(visits) or None, list(outcomes) or None, progress, unused, engine,
                                  exact_odds_ratio=exact_odds_ratio, spark_master=spark_master)
    finally:
        _echo_not_used(unused)
    events = result.adverse_events
    if as_json or fmt == "json":
        _print_json(analyze_json(study, result.comparisons, result.observations,
                                 incidence_json(events) if events else None, result.arms_not_compared,
                                 result.not_compared))
    else:
        click.echo(render(comparison_table(result.comparisons), fmt))
        if events and fmt != "csv":  # csv stays one table; --json has the incidence too
            click.echo("\n" + render(incidence_table(events), fmt))
        _info(f"note: {comparisons_summary(study, result.comparisons)}", err=True)
    if result.arms_not_compared:
        click.echo(f"note: arm(s) with data in no comparison of the analysis plan: {', '.join(result.arms_not_compared)} "
                   "(add them to analysis.comparisons to compare them)", err=True)
    if result.not_compared:
        click.echo("note: outcome(s) not compared: " + "; ".join(f"{code} ({why})" for code, _, why in result.not_compared),
                   err=True)
    _echo_observations(result.observations)
    if events and events.account.skipped:
        click.echo(f"AdverseEvents: {events.account.describe('counted')}", err=True)
    if plot:
        forest_plot(result.comparisons, plot, study=study, synthetic=result.synthetic)
        _info(f"forest plot: {plot}", err=True)


@main.command("verify")
@_source_option
@_server_option
@_server_options
@_study_option
@_engine_option
@_spark_master_option
@_json_option
def verify_command(source: Path | None, server: str | None, ca_bundle: str | None, timeout: float, config: str | None,
                   study_path: Path | None, engine: str, spark_master: str | None, as_json: bool) -> None:
    """Recompute every published result of the study definition from the FHIR data at --store or --server.

    Compares at the paper's precision and exits 6 if any result does not match, 4 if the
    data hold no findings of the study's subjects, 8 if the server could not be used.
    --json follows fhir_msc/schemas/verify.schema.json.
    """
    from . import jobs
    from .analysis.export import verify_json
    from .analysis.report import render, verification_table

    where = _source(source, server, config, ca_bundle, timeout)
    study = _study(study_path, source)
    unused: list[str] = []
    try:
        with _progress(not as_json, _RERUN) as progress:
            result = jobs.verify(study, where, progress, unused, engine,
                                 spark_master=spark_master)
    finally:
        _echo_not_used(unused)
    checks = result.checks
    if as_json:
        _print_json(verify_json(study, checks, result.observations))
    else:
        if not _output().quiet or result.reproduced < len(checks):
            click.echo(render(verification_table(checks), "table"))
        click.echo(f"reproduced {result.reproduced}/{len(checks)} published results")
    _echo_observations(result.observations)
    if result.reproduced < len(checks):
        sys.exit(ExitCode.MISMATCH)


@main.command("report")
@_source_option
@_server_option
@_server_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Directory to write report.html, analysis.csv, analysis.json, forest.png and forest.svg into.")
@_study_option
@_engine_option
@_spark_master_option
@_json_option
def report_command(source: Path | None, server: str | None, ca_bundle: str | None, timeout: float, config: str | None,
                   out: Path, study_path: Path | None, engine: str, spark_master: str | None, as_json: bool) -> None:
    """Write the study's report from the FHIR data at --store or --server into --out.

    report.html is one self-contained page (no links out, no local paths): the study and its
    definition's SHA-256, the published results recomputed, the forest plot, every visit's
    between-arm table and the adverse events. Beside it: analysis.csv (the table), analysis.json
    (the analyze --json document) and the forest plot as forest.png and forest.svg. Data whose
    subjects are all tagged HTEST are marked synthetic. Exit code 4 means the data hold no
    findings of the study's subjects; 6 that a published result was not reproduced (the
    report is written all the same); 8 that the server could not be used.
    """
    from . import jobs

    where = _source(source, server, config, ca_bundle, timeout)
    study = _study(study_path, source)
    unused: list[str] = []
    try:
        with _progress(not as_json, _RERUN) as progress:
            result = jobs.report(study, where, out, progress, unused,
                                 engine, spark_master=spark_master)
    finally:
        _echo_not_used(unused)
    if as_json:
        _print_json({"study": study.study.identifier.value, "synthetic": result.synthetic,
                     "files": {kind: str(path) for kind, path in result.paths.items()},
                     "comparisons": len(result.comparisons),
                     "published": {"reproduced": result.reproduced, "total": len(result.checks)}})
    else:
        click.echo(f"report: {result.paths['html']} ({len(result.comparisons)} comparisons; reproduced "
                   f"{result.reproduced}/{len(result.checks)} published results"
                   + ("; synthetic data" if result.synthetic else "") + ")")
        _info("beside it: " + ", ".join(path.name for kind, path in result.paths.items() if kind != "html"))
    _echo_observations(result.observations)
    if result.reproduced < len(result.checks):
        sys.exit(ExitCode.MISMATCH)


@main.command("derive")
@click.option("--store", "store", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The NDJSON store to read the Observations from and write the derived Observations to.")
@_study_option
@_json_option
def derive_command(store: Path, study_path: Path | None, as_json: bool) -> None:
    """Write the study's derived endpoints (analysis.derived) into --store as FHIR Observations.

    Each derived value is computed from the store's Observations and upserted as an
    Observation whose derivedFrom references its sources; unchanged ones are not rewritten.
    analyze and verify never read them: they recompute every derived value. Derived
    Observations whose sources no longer give a value are named and left in place. Exit 4
    if the study declares no derived endpoints or the store holds no findings of its
    subjects, 9 if another job is writing the store.
    """
    from . import jobs
    from .analysis.export import account_json

    study = _study(study_path, store)
    with _progress(not as_json, _RERUN) as progress:
        result = jobs.derive(study, store, progress)
    changes = result.changes
    if as_json:
        _print_json({"values": result.values, "changes": {"created": changes.created, "updated": changes.updated,
                                                          "unchanged": changes.unchanged},
                     "stale": result.stale, "observations": account_json(result.observations)})
        return
    click.echo(f"derived {sum(result.values.values())} values: "
               + ", ".join(f"{code} {count}" for code, count in result.values.items()))
    click.echo(f"in the store: Observation created {changes.created}; updated {changes.updated}; "
               f"unchanged {changes.unchanged}")
    if result.stale:
        _echo_cut("stale (sources give no value now; left in the store)", result.stale)


def _echo_demo(result: jobs.DemoResult) -> None:
    from .analysis.adverse_events import incidence_table
    from .analysis.report import render, verification_table

    _info(f"store: {result.store}")
    _info(f"bundle: {result.bundle}")
    note = " (synthetic data, tagged HTEST)" if result.mapped.synthetic else ""
    _echo_cut("rejected", result.mapped.rejections, where=f" (all in {result.store / 'rejects'})")
    _info(f"mapped {result.mapped.total} resources{note}:")
    for resource_type, count in result.mapped.counts.items():
        _info(f"  {resource_type:<26}{count:>6}")
    _info("infusions: " + ", ".join(f"{t} {n}" for t, n in result.infusions.items()))
    _info("subjects by arm: " + ", ".join(f"{arm} {n}" for arm, n in result.subjects_by_arm.items()))
    for version, report in result.validation.items():
        (_info if report.ok else click.echo)(f"validation {version}: {sum(report.checked.values())} resources, "
                                             + ("all valid" if report.ok else f"{report.error_count} problem(s)"))
    if result.roundtrip.lossless:
        _info("round trip: lossless (tables → FHIR → tables and FHIR → tables → FHIR are equal)")
    else:
        click.echo("round trip: LOSSY")
        for line in result.roundtrip.differences:
            click.echo(f"  {line}")
    if not _output().quiet or result.reproduced < len(result.verification):
        click.echo(render(verification_table(result.verification), "table"))
    if result.adverse_events:
        _info(render(incidence_table(result.adverse_events), "table"))
    _info(f"report: {result.report['html']} (beside it: "
          + ", ".join(path.name for kind, path in result.report.items() if kind != "html") + ")")
    for example in result.examples:
        if example.reproduced < len(example.verification):
            click.echo(render(verification_table(example.verification), "table"))
        click.echo(f"example {example.study.study.identifier.value} ({example.study.file.name if example.study.file else ''}): "
                   f"mapped {example.mapped.total} resources, reproduced {example.reproduced}/{len(example.verification)} "
                   f"published results; report {example.report['html']}")
    click.echo(f"reproduced {result.reproduced}/{len(result.verification)} published results")


def _demo_json(study: Study, result: jobs.DemoResult) -> dict[str, Any]:
    """Everything the demo did; its ``verify`` part follows verify.schema.json, ``validation`` validate.schema.json."""
    from .analysis.export import verify_json

    return {
        "workdir": str(result.workdir), "store": str(result.store), "bundle": str(result.bundle),
        "mapped": {**_to_jsonable(result.mapped), "total": result.mapped.total},
        "subjects_by_arm": [{"arm": arm, "subjects": n} for arm, n in result.subjects_by_arm.items()],
        "infusions": [{"treatment": code, "administrations": n} for code, n in result.infusions.items()],
        "validation": {version: _validation_json(report) for version, report in result.validation.items()},
        "roundtrip": {**_to_jsonable(result.roundtrip), "lossless": result.roundtrip.lossless},
        "verify": verify_json(study, result.verification, result.observations),
        "report": _to_jsonable(result.report),
        "examples": [{"definition": str(e.study.file), "tables": str(e.tables), "store": str(e.store),
                      "mapped": e.mapped.total, "verify": verify_json(e.study, e.verification, e.observations),
                      "report": _to_jsonable(e.report)} for e in result.examples],
    }


def _exit_for(ok: bool) -> None:
    if not ok:
        sys.exit(ExitCode.PARTIAL)


def _echo_notes(notes: Iterable[str]) -> None:
    """Notes (what was recovered, what the server lacks, how a file was read) on stderr."""
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _echo_push(result) -> None:
    _echo_notes(result.notes)
    if result.mode == "verify":
        click.echo(f"verified {result.target}: the server holds {result.unchanged} of the {result.total} resources, "
                   f"lacks {len(result.failed)}; {result.requests} requests, {result.seconds:.1f}s")
        _echo_cut("lacking", result.failed, where=" (all in --json)")
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
    _echo_cut("failed", result.failed, where=" (all in --json)")


def _echo_pull(result, store: Path) -> None:
    _echo_notes([*result.recovered, *result.notes])
    counts = ", ".join(f"{t} {n}" for t, n in result.counts.items()) or "nothing new"
    since = f" (changes since {result.since})" if result.since else ""
    click.echo(f"pulled from {result.source} into {store}{since}: {counts}; {result.requests} requests, {result.seconds:.1f}s")
    if result.removed:
        click.echo("removed (deleted on the server): " + ", ".join(f"{t} {n}" for t, n in result.removed.items()))
    if result.unconfirmed:
        click.echo(f"kept, deletion not confirmed: {len(result.unconfirmed)} resource(s) the server no longer lists "
                   "but that could not be proven deleted", err=True)
        _echo_cut("  not confirmed", result.unconfirmed, where=" (all in --json)")
    _echo_pull_conflicts(result)
    if result.invalid:
        click.echo(f"not stored, invalid: {sum(result.invalid.values())} resource(s)", err=True)
        _echo_cut("  not stored", [f"{count} × {reason}" for reason, count in sorted(result.invalid.items(), key=lambda item: -item[1])])
    if result.missed:
        click.echo(f"incomplete: {len(result.missed)} search(es) fell short of what the server says they match; "
                   "the next pull asks again from the same point", err=True)
        _echo_cut("  missed", result.missed, where=" (all in --json)")


def _echo_pull_conflicts(result) -> None:
    if result.conflicts:
        kept = "the server's versions taken" if result.prefer == "server" else \
            "the local versions kept; --prefer server to take the server's"
        click.echo(f"{len(result.conflicts)} conflict(s) with local data in {result.conflicts_file} ({kept})")
        _echo_cut("  conflict", [f"{c.resource_type}/{c.id}: {c.differs}" for c in result.conflicts],
                  where=" (all in --json)")


def _pull_exit(result) -> None:
    """Exit 7 if the pull failed in part (invalid resources, searches that fell short, export errors), else 10 if it
    kept local data that differs from the server's."""
    _exit_for(result.ok)
    if result.unresolved:
        sys.exit(ExitCode.CONFLICTS)


_server_version_option = click.option(
    "--fhir-version", type=click.Choice(VERSIONS, case_sensitive=False), default=None,
    help="FHIR version of the server (default: the fhirVersion of its CapabilityStatement, else R4).")
_prefer_option = click.option(
    "--prefer", type=click.Choice(PREFER), default="local", show_default=True,
    help="Which version a pull keeps when a local resource differs from the server's and the server does not have "
         "it (never pulled from there, or changed here since): local keeps it, server takes the server's.")
_method_option = click.option(
    "--method", type=click.Choice(METHODS), default="auto", show_default=True, envvar="FHIR_MSC_METHOD",
    help="id: PUT Type/id; conditional: PUT Type?identifier=…; auto: id if the server allows update-as-create "
         "(needs a CapabilityStatement; also FHIR_MSC_METHOD).")


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
                 study_path: Path | None, as_json: bool) -> None:
    """Push SOURCE (store directory, bundle file or trial tables) to a FHIR server.

    Idempotent and resumable: the journal in --state records what reached the server, so a
    rerun sends only what is new or changed. Every push then checks that the server holds
    each resource of SOURCE, sends again what it lacks (a restarted or wiped server) and
    checks once more. Exit 0 only if the server holds everything, 7 if some resources
    failed or are still missing, 8 if the server could not be used, 9 if another job holds
    --state.
    """
    from . import jobs

    if dry_run + verify + full > 1:
        raise click.UsageError("give at most one of --dry-run, --verify and --full")
    mode = "dry-run" if dry_run else "verify" if verify else "full" if full else "push"
    client = _client(server, config, ca_bundle, timeout)
    study = _study(study_path, source)
    with _progress(not as_json, f"the journal in {state} records every bundle the server confirmed: "
                                "rerun the same command to send the rest") as progress:
        result = jobs.push(study, source, client, state, bundle_size=bundle_size, method=method,
                           mode=mode, fhir_version=fhir_version, progress=progress)
    _print_json(result) if as_json else _echo_push(result)
    _exit_for(result.ok)


@main.command("pull")
@_required_server_option
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Store directory to pull into (created if missing).")
@click.option("--full", is_flag=True, help="Pull everything, not just what changed since the last pull.")
@_server_version_option
@click.option("--bulk", is_flag=True,
              help="Use FHIR Bulk Data $export (Group, Patient or system level) when the server declares it; paged search otherwise.")
@click.option("--since", metavar="INSTANT", help="With --bulk: export what changed after INSTANT instead of after the last pull.")
@_prefer_option
@_state_option
@_server_options
@_study_option
@_json_option
def pull_command(server: str, store: Path, full: bool, fhir_version: str | None, bulk: bool, since: str | None, prefer: str,
                 state: Path, ca_bundle: str | None,
                 timeout: float, config: str | None, study_path: Path | None, as_json: bool) -> None:
    """Pull the study's ResearchStudy, subjects, Patients, visits, infusions and Observations from a server.

    Incremental by default (_lastUpdated since the last successful pull, in the server's clock).
    Resources the server held at the last pull and has deleted since are removed from the
    store, only with proof (a complete listing without them, or 404/410 on a read); the
    others are kept and counted as not confirmed. A local resource the server does not have
    in that version (never pulled from it, or changed here since) is a conflict: listed in
    --state/pull-conflicts.csv and kept, unless --prefer server. Resources that fail
    validation are not stored: they are counted by reason and the exit code is 7 (also when
    a search fell short of what the server says it matches, or a bulk export reports
    errors); 10 means conflicts kept the local versions. With --bulk, one Bulk Data export
    instead of paged searches; a killed export resumes. Exit code 8 means the server could
    not be used; 9 that another job is writing the store or holds --state.
    """
    from . import jobs
    from .server.bulk_pull import BulkPullResult

    if since and not bulk:
        raise click.UsageError("--since goes with --bulk")
    client = _client(server, config, ca_bundle, timeout)
    study = _study(study_path, store, recording=True)
    resume = (f"the export job and the files already verified are journaled in {state / 'bulk'}: rerun the same command to resume"
              if bulk else f"what was pulled is in {store}; the next pull starts after the last complete one: rerun the same command")
    with _progress(not as_json, resume) as progress:
        result = jobs.pull(study, client, store, state, full=full, fhir_version=fhir_version,
                           bulk=bulk, since=since, prefer=prefer, progress=progress)
    if as_json:
        _print_json(result)
    else:
        _echo_bulk_pull(result, store) if isinstance(result, BulkPullResult) else _echo_pull(result, store)
    _pull_exit(result)


def _echo_bulk_pull(result, store: Path) -> None:
    _echo_notes(result.recovered)
    counts = ", ".join(f"{t} {n}" for t, n in result.counts.items()) or "nothing new"
    since = f", changes since {result.since}" if result.since else ""
    reused = f", {result.resumed_files} already downloaded" if result.resumed_files else ""
    if result.removed:
        counts += "; removed (deleted on the server): " + ", ".join(f"{t} {n}" for t, n in result.removed.items())
    resumed = "resumed " if result.resumed else ""
    how = f" by {resumed}bulk export ({result.level}{since}; {result.files} files{reused})" if result.level else ""
    click.echo(f"pulled from {result.source} into {store}{how}: {counts}; {result.requests} requests, {result.seconds:.1f}s")
    _echo_notes(result.notes)
    _echo_pull_conflicts(result)
    _echo_cut("export error", result.errors)
    if result.errors:
        click.echo(f"the export reported {len(result.errors)} error(s): the next pull starts from the same point", err=True)


@main.command("sync")
@click.option("--from", "source", required=True, metavar="URL|DIR", help="Where the data comes from: a server URL or a store/tables directory.")
@click.option("--to", "target", required=True, metavar="URL|DIR", help="Where it goes: a server URL or a store directory.")
@click.option("--bundle-size", type=click.IntRange(1, 1000), default=50, show_default=True, metavar="N",
              help="Resources per transaction Bundle when pushing.")
@_method_option
@_server_version_option
@_prefer_option
@_state_option
@_server_options
@_study_option
@_json_option
def sync_command(source: str, target: str, bundle_size: int, method: str, fhir_version: str | None, prefer: str,
                 state: Path, ca_bundle: str | None, timeout: float, config: str | None, study_path: Path | None,
                 as_json: bool) -> None:
    """Bring --to up to date with --from: store → server, server → store, or server → server.

    Safe from cron: a lock in --state stops concurrent runs (exit 9), only changes move, the
    target server is checked to hold everything afterwards, and the exit code says success
    (0), partial failure (7), failure (8) or local data kept in conflicts with the server's
    (10; see pull).
    """
    from . import jobs

    clients = {url: _client(url, config, ca_bundle, timeout) for url in (source, target) if jobs.is_server(url)}
    local = target if not jobs.is_server(target) else source if not jobs.is_server(source) else None
    study = _study(study_path, Path(local) if local else None, recording=local == target)
    with _progress(not as_json, f"the journal in {state} records what reached the target: rerun the same command "
                                "to move the rest") as progress:
        result = jobs.sync(study, source, target, state, clients.__getitem__, bundle_size=bundle_size,
                           method=method, fhir_version=fhir_version, prefer=prefer, progress=progress)
    if as_json:
        _print_json(result)
    else:
        if result.pulled:
            _echo_pull(result.pulled, Path(target) if not jobs.is_server(target) else state / "staging")
        if result.pushed:
            _echo_push(result.pushed)
    _exit_for(result.ok)
    if result.pulled:
        _pull_exit(result.pulled)


@main.command("repair")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Only say what would be completed, removed or dropped.")
@_json_option
def repair_command(store: Path, dry_run: bool, as_json: bool) -> None:
    """Make STORE readable again after a killed or broken job.

    Completes a multi-type write that a killed job had committed, removes the temporary
    files and directories killed jobs left, and drops only the lines that are not a
    resource of their file (a torn last line, bad JSON, another type, a bad id), naming
    each (file, line number, first bytes). Exit 0 when the store reads cleanly afterwards,
    4 when it does not (with --dry-run: when lines would have to be dropped), 9 when
    another job is writing it.
    """
    from . import jobs

    result = jobs.repair(store, dry_run=dry_run)
    if as_json:
        _print_json(result)
    else:
        verb = "would drop" if dry_run else "dropped"
        for note in result.recovered:
            click.echo(note)
        for line in result.dropped:
            click.echo(f"{verb}: {line}")
        state = "sound" if result.sound else "NOT sound"
        click.echo(f"{store}: {len(result.dropped)} line(s) {verb}, {len(result.recovered)} other repair(s); {state}")
    if not result.sound:
        sys.exit(ExitCode.BAD_INPUT)


@main.command("hospital-pull")
@click.option("--server", metavar="URL", envvar="FHIR_MSC_HOSPITAL_SERVER", required=True,
              help="The hospital's FHIR base URL (also FHIR_MSC_HOSPITAL_SERVER).")
@click.option("--enrollment", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, metavar="CSV",
              help="USUBJID,PATIENT_IDENTIFIER (system|value) for each enrolled subject.")
@click.option("--store", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="The study store: subjects and start dates come from it, and the new findings go into it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("hospital-findings"),
              show_default=True, metavar="DIR",
              help="Where the findings tables and conflicts.csv (study and hospital values side by side) are written for review.")
@click.option("--prefer", type=click.Choice(HOSPITAL_PREFER), default="study", show_default=True,
              help="Which value wins when the store already holds a value for the subject, outcome and visit.")
@click.option("--bulk", is_flag=True,
              help="Use one FHIR Bulk Data $export (Patient or system level) when the server declares it; paged search otherwise.")
@_state_option
@_server_options
@_study_option
@_json_option
def hospital_pull_command(server: str, enrollment: Path, store: Path, out: Path, prefer: str, bulk: bool, state: Path,
                          ca_bundle: str | None, timeout: float, config: str | None, study_path: Path | None,
                          as_json: bool) -> None:
    """Fetch enrolled patients' results from a hospital FHIR server and add them at the right study visits.

    All Observations of each enrolled patient are read; those with the standard codes of the
    study's outcomes are converted to the study's units and placed at the visit (where the
    outcome is scheduled) whose window holds their date. Study values are never overwritten:
    a different hospital value is a conflict, listed in --out/conflicts.csv and left out
    unless --prefer hospital. Everything not used is counted by reason.
    With --bulk, the Patients and the Observations with the study's codes come from one Bulk
    Data export (kept in --state until used, so a killed export resumes; every Observation
    where the server does not apply that code filter). A search whose pages fall short of what
    the server says it matches is asked again by the study's codes. Exit code 0 means done
    (conflicts and unused results included); 7 that some searches fell short even so (their
    results counted, not used); 8 that the server could not be used (an export without a
    Patient file included); 9 that another job is writing the store.
    """
    from . import jobs

    client = _client(server, config, ca_bundle, timeout)
    study = _study(study_path, store, recording=True)
    with _progress(not as_json, f"{store} is changed only when the results are mapped at the end: "
                                "rerun the same command") as progress:
        result = jobs.hospital_pull(study, client, enrollment, store, out, prefer, progress,
                                    bulk_state=state if bulk else None)
    if as_json:
        _print_json(result)
        _exit_for(result.ok)
        return
    click.echo(f"hospital {server}: {result.patients.used}/{result.enrolled} enrolled patients found; "
               f"{len(result.findings)} findings written to {out} and mapped into {store}")
    click.echo(f"Observations of the patients found: {result.observations.describe()}")
    if result.conflicts:
        kept = "the hospital's values replaced the study's" if prefer == "hospital" else \
            "the study's values kept; --prefer hospital to take the hospital's"
        click.echo(f"{len(result.conflicts)} conflict(s) with study values in {out / jobs.CONFLICTS_FILE} ({kept})")
    _echo_skipped("  not used:", result.observations)
    if result.unused_codes:
        shown = list(result.unused_codes.items())[:MAX_SHOWN]
        more = len(result.unused_codes) - len(shown)
        click.echo("  codes not used by the study: " + ", ".join(f"{code} ×{n}" for code, n in shown)
                   + (f" … and {more} more" if more else ""), err=True)
    _echo_skipped("  patient not used:", result.patients)
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    if result.missed:
        click.echo(f"incomplete: {len(result.missed)} search(es) fell short of what the server says they match, even "
                   "narrowed; what they listed was not used", err=True)
        _echo_cut("  missed", result.missed, where=" (all in --json)")
    _exit_for(result.ok)


@main.group("view")
def view_group() -> None:
    """SQL-on-FHIR v2 ViewDefinitions: flat tables of FHIR resources."""


@view_group.command("run")
@click.argument("view", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "source", metavar="PATH",
              help="Store directory or Bundle JSON file to read (with --engine spark also a URL Spark reads, "
                   "e.g. s3a://bucket/store).")
@_server_option
@_server_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE",
              help="Output file; its suffix picks the format: .parquet, .csv or .ndjson.")
@click.option("--engine", type=click.Choice(VIEW_ENGINES), default=DEFAULT_VIEW_ENGINE, show_default=True,
              help="Engine that runs the view: duckdb (embedded, one SQL query), python (the reference engine) or "
                   "spark (PySpark); all give the same table.")
@_spark_master_option
@_json_option
def view_run_command(view: Path, source: str | None, server: str | None, ca_bundle: str | None, timeout: float,
                     config: str | None, out: Path, engine: str, spark_master: str | None, as_json: bool) -> None:
    """Run the ViewDefinition VIEW.json over --store or --server and write its rows to --out.

    Only resources of the view's type are read. Prints the rows written, the resources read per
    type and those skipped and why (--json: the same as JSON). Exit code 4 means the view is not
    a valid ViewDefinition or cannot be applied to a resource (the message names the JSON path,
    e.g. select[0].column[2].path); 2 that the engine cannot run here; 8 that the server could
    not be used.
    """
    from . import jobs

    if source is not None and "://" not in source and not Path(source).exists():
        raise click.BadParameter(f"{source}: no such store directory or bundle file", param_hint="--store")
    location = None if source is None else source if "://" in source else Path(source)
    where = _source(location, server, config, ca_bundle, timeout)  # type: ignore[arg-type]  (a URL: see jobs.view_run)
    result = jobs.view_run(view, where, out, engine=engine, spark_master=spark_master)
    if as_json:
        _print_json(result)
        return
    click.echo(f"{result.rows:,} rows of {result.resource} ({len(result.columns)} columns) written to {result.out} "
               f"by the {result.engine} engine")
    read = ", ".join(f"{kind} {count:,}" for kind, count in sorted(result.read.items())) or "none"
    _info(f"  read: {read}")
    for reason, count in sorted(result.skipped.items()):
        _info(f"  skipped: {count:,} ({reason})")


_views_option = click.option(
    "--view", "views", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
    help="Another ViewDefinition JSON file to add to the shipped views, named by its \"name\"; repeatable.")
_view_store_option = click.option(
    "--store", "store", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
    help="The NDJSON store to read (it is only read).")


@main.command("export")
@_view_store_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Directory to write one file per view into (created owner-only if missing).")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="parquet", show_default=True,
              help="File format of the tables; CSV writes a collection column as a JSON array.")
@_views_option
@_study_option
@_json_option
def export_command(store: Path, out: Path, fmt: str, views: tuple[Path, ...], study_path: Path | None,
                   as_json: bool) -> None:
    """Write the analysis views of --store as tables for your own tools: one file per view in --out.

    The shipped SQL-on-FHIR views are patients, subjects (with arm), visits, observations
    (value, unit, answers, encounter) and adverse_events; --view adds your own ViewDefinitions. DuckDB runs them over
    the store's NDJSON files; each file (e.g. OUT/observations.parquet) is owner-only and
    replaced whole, never half-written. Prints rows per view and the resources read per type.
    Exit code 4 means the store or a view cannot be read; 2 a view name taken twice.

    \b
    Example:
        fhir-msc export --store fhir-msc-demo/store --out tables --format parquet
        python -c "import pandas; print(pandas.read_parquet('tables/observations.parquet'))"
    """
    from . import jobs

    result = jobs.export(_study(study_path, store), store, out, fmt, views)
    if as_json:
        _print_json(result)
        return
    for name, path in result.files.items():
        click.echo(f"{name}: {result.rows[name]:,} rows written to {path}")
    _info("  read: " + (", ".join(f"{kind} {count:,}" for kind, count in result.read.items()) or "none"))
    for name, skipped in result.skipped.items():
        for reason, count in sorted(skipped.items()):
            _info(f"  {name}: skipped {count:,} ({reason})")


SQL_FORMATS = ("table", "csv", "markdown", "json")


@main.command("sql")
@click.argument("query")
@_view_store_option
@_views_option
@click.option("--format", "fmt", type=click.Choice(SQL_FORMATS), default="table", show_default=True,
              help="Output format of the result; csv is that of `export --format csv` (lists and objects as JSON, "
                   "true/false), json the same document as --json.")
@_study_option
@_json_option
def sql_command(query: str, store: Path, views: tuple[Path, ...], fmt: str, study_path: Path | None,
                as_json: bool) -> None:
    """Run one SELECT (DuckDB SQL) over the analysis views of --store, each a table named by its view.

    Tables: patients, subjects, visits, observations, adverse_events (see `fhir-msc export`), and each --view
    FILE by its "name". Read-only: only a single SELECT runs, with files and network shut off
    (COPY, ATTACH, INSTALL, LOAD, SET and file readers are refused); nothing is written. The
    row count goes to stderr. Exit code 4 means the query cannot be run (one line says why);
    2 that it is not a single SELECT.

    \b
    Example:
        fhir-msc sql "SELECT s.assigned_arm, count(*) AS n FROM subjects s GROUP BY 1" \\
            --store fhir-msc-demo/store --format markdown
    """
    from . import jobs
    from .analysis.report import render
    from .analysis.views.output import csv_text

    result = jobs.sql(_study(study_path, store), query, store, views)
    table = result.table
    if as_json or fmt == "json":
        _print_json({"columns": table.column_names, "rows": [_to_jsonable_cells(row) for row in table.to_pylist()]})
    elif fmt == "csv":
        click.echo(csv_text(table), nl=False)
    else:
        frame = table.to_pandas()
        for name in frame.columns:  # lists as JSON arrays, as in the CSV
            if frame[name].map(lambda v: isinstance(v, (list, dict))).any():
                frame[name] = frame[name].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
        click.echo(render(frame, fmt).rstrip("\n") if len(frame) else " | ".join(table.column_names))
    _info(f"{table.num_rows:,} rows", err=True)


def _to_jsonable_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A result row with values JSON has no type for (dates, decimals) as their text."""
    return {name: value if value is None or isinstance(value, (bool, int, float, str, list, dict)) else str(value)
            for name, value in row.items()}


@main.command("init")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@_json_option
def init_command(directory: Path, as_json: bool) -> None:
    """Start a study of your own in DIR: a commented study file and synthetic tables to replace.

    Writes DIR/study.yaml (every section of a study file, commented: a made-up two-arm trial
    with a continuous, a binary and an ordinal outcome, adverse events and published results),
    DIR/study.schema.json (its JSON Schema, which the file's first line points editors to) and
    DIR/tables/ (SYNTHETIC tables, marked so by tables/dataset.yaml) that map, analyse and
    verify as written. DIR must be new or empty: exit code 2 otherwise (init never overwrites).
    """
    from . import jobs

    result = jobs.init_study(directory)
    steps = _next_steps(result, directory / "store")
    if as_json:
        _print_json({**_to_jsonable(result), "next": steps})
        return
    click.echo(f"wrote {result.study}, {result.schema} and {len(result.tables)} files of synthetic data in "
               f"{result.tables[0].parent}")
    _info("\n".join(["next: make it your trial's (edit the study file, replace the tables, delete tables/dataset.yaml "
                     "once they are real), then:", *(f"  {step}" for step in steps)]))


def _next_steps(result: jobs.InitResult, store: Path) -> list[str]:
    """The commands that take a new study from its file to its verified results, as they are typed (the store
    records the study map was given)."""
    tables, study = str(result.tables[0].parent), str(result.study)
    return [shlex.join(["fhir-msc", *argv]) for argv in (
        ["check", study], ["map", tables, "--study", study, "--store", str(store)],
        ["analyze", "--store", str(store)], ["verify", "--store", str(store)])]


@main.command("check")
@click.argument("study_file", metavar="STUDY.yaml", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def check_command(study_file: Path, as_json: bool) -> None:
    """Check the study definition STUDY.yaml, reading no data.

    Each mistake is one line, `FILE:LINE: PATH: what is wrong`, PATH as in the YAML
    (`arms[1].code`), with the nearest allowed key, value or code where one was misspelt;
    exit code 4 if there is any. A valid file gets one line: what it declares (arms, visits,
    outcomes, published results). --json: {"file", "valid", "problems"} or what it declares.
    """
    from .study.definition import load_study
    from .study.problems import InvalidStudyDefinition

    try:
        study = load_study(study_file)
    except InvalidStudyDefinition as invalid:
        if as_json:
            _print_json({"file": study_file, "valid": False, "problems": invalid.problems})
        else:
            for problem in invalid.problems:
                click.echo(f"{study_file}:{f'{problem.line}:' if problem.line else ''} {problem}")
        sys.exit(ExitCode.BAD_INPUT)
    declared = _declared(study)
    if as_json:
        _print_json({"file": study_file, "valid": True, "study": study.study.identifier.value, **declared})
        return
    counts = ", ".join(f"{len(codes)} {name.replace('_', ' ')}" for name, codes in declared.items() if codes)
    click.echo(f"{study_file}: valid: {study.study.identifier.value}: {counts}")


def _declared(study: Study) -> dict[str, list[str]]:
    """What a study definition declares, by the codes it gives each (published results: their labels)."""
    plan = study.analysis
    return {"arms": [arm.code for arm in study.arms], "visits": [visit.code for visit in study.visits],
            "outcomes": [outcome.code for outcome in study.outcomes],
            "time_to_event_entries": [entry.code for entry in study.time_to_event],
            "derived_endpoints": [endpoint.code for endpoint in plan.derived] if plan else [],
            "adverse_event_terms": list(study.adverse_events.terms) if study.adverse_events else [],
            "published_results": [result.label for result in plan.published] if plan else []}
