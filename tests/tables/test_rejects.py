"""The rejects directory: merged, never wiped; rows replaced only where this run read them again."""

from __future__ import annotations

import csv
from pathlib import Path

from fhir_msc.tables.rejects import Rejection, RejectLog, publish_rejects, waiting_rejects

KEYS = {"qs.csv": ["USUBJID", "QSTESTCD"], "dm.csv": ["USUBJID"]}
HEADER = ["USUBJID", "QSTESTCD", "QSORRES"]


def spool_rows(tmp_path: Path, rows: list[list[str]], header=HEADER, waiting=None) -> RejectLog:
    log = RejectLog(tmp_path / "spool", waiting=waiting or {})
    for number, row in enumerate(rows, start=2):
        log.read("in/qs.csv", tuple(row[:2]))
        log.reject(Rejection(file="in/qs.csv", row=number, column="QSORRES", value=row[2], problem="bad"), header, row)
    log.close()
    return log


def read(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def publish(log: RejectLog, target: Path, replayed=(), dataset=None) -> list[Path]:
    return publish_rejects(log.directory, target, replayed=replayed, handled=log.handled, key_columns=KEYS,
                           dataset=dataset)


def test_other_files_and_rows_waiting_are_kept(tmp_path):
    target = tmp_path / "rejects"
    target.mkdir()
    (target / "readme.txt").write_text("mine")
    publish(spool_rows(tmp_path, [["S1", "A", "x"]]), target)
    log = spool_rows(tmp_path, [["S2", "B", "y"]], waiting=waiting_rejects(target, KEYS))
    assert publish(log, target) == [target / "qs.csv"]
    assert [r[:3] for r in read(target / "qs.csv")] == [HEADER, ["S1", "A", "x"], ["S2", "B", "y"]]
    assert (target / "readme.txt").read_text() == "mine"


def test_a_row_read_again_replaces_the_waiting_one(tmp_path):
    target = tmp_path / "rejects"
    publish(spool_rows(tmp_path, [["S1", "A", "x"], ["S2", "B", "y"]]), target)
    log = spool_rows(tmp_path, [["S1", "A", "still bad"]], waiting=waiting_rejects(target, KEYS))
    publish(log, target)
    assert [r[:3] for r in read(target / "qs.csv")[1:]] == [["S2", "B", "y"], ["S1", "A", "still bad"]]


def test_rows_of_another_header_are_merged_by_column_name(tmp_path):
    target = tmp_path / "rejects"
    publish(spool_rows(tmp_path, [["S1", "A", "x"]]), target)
    log = spool_rows(tmp_path, [["B", "S2", "y", "note"]], header=["QSTESTCD", "USUBJID", "QSORRES", "COMMENT"])
    publish(log, target)
    rows = read(target / "qs.csv")
    assert rows[0] == [*HEADER, "COMMENT", "REJECT_REASON"]
    assert [r[:4] for r in rows[1:]] == [["S1", "A", "x", ""], ["S2", "B", "y", "note"]]


def test_replay_replaces_the_files_it_read_and_takes_dataset_yaml_with_the_last(tmp_path):
    target = tmp_path / "rejects"
    dataset = tmp_path / "dataset.yaml"
    dataset.write_text("synthetic: true\n")
    publish(spool_rows(tmp_path, [["S1", "A", "x"]]), target, dataset=dataset)
    assert (target / "dataset.yaml").read_text() == "synthetic: true\n"
    assert publish(RejectLog(tmp_path / "empty-spool"), target, replayed=["qs.csv"], dataset=target / "dataset.yaml") == []
    assert not target.exists()


def test_account_counts_read_mapped_and_rejected_rows(tmp_path):
    log = RejectLog(None)
    for _ in range(3):
        log.read("qs.csv")
    log.mapped("qs.csv")
    log.reject(Rejection(file="qs.csv", row=2, column=None, value=None, problem="bad"), ["A"], ["1"])
    log.reject(Rejection(file="qs.csv", row=3, column=None, value=None, problem="bad"), ["A"], ["2"])
    log.reject(Rejection(file="dm.csv", row=None, column=None, value=None, problem="file not found"))
    (qs, dm) = log.accounts
    assert (qs.read, qs.mapped, qs.rejected, qs.balanced) == (3, 1, 2, True)
    assert (dm.read, dm.rejected) == (0, 0)
