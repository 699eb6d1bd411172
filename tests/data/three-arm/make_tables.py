"""Writes tables/ of the made-up three-arm study (run once; the CSVs are committed). NOT real trial data.

Fixed seed: python tests/data/three-arm/make_tables.py
"""

import csv
import datetime as dt
from pathlib import Path

import numpy as np

rng = np.random.default_rng(20261127)
here = Path(__file__).parent / "tables"
arms = {"HIGH": ("High dose", "DRUGY", 20), "LOW": ("Low dose", "DRUGY", 5), "PBO": ("Placebo", "PLACEBO", 0)}
shift = {"HIGH": -6.0, "LOW": -3.0, "PBO": 0.0}
dm, ex, xs = [], [], []
number = 0
for arm, (name, treatment, dose) in arms.items():
    for _ in range(14):
        number += 1
        subject = f"TRI-{number:02d}"
        age, sex = int(rng.integers(25, 76)), "MF"[int(rng.integers(0, 2))]
        dm.append(["TRI-001", subject, age, sex, "XXX", arm, name, arm, name, "2025-01-06", "2025-04-07"])
        ex.append(["TRI-001", subject, treatment, dose, "mg", "ORAL", "2025-01-06"])
        baseline = round(float(rng.normal(30, 6)), 1)
        severe = "Y" if baseline > 31 else "N"
        week12 = round(baseline * 0.7 + 8 + shift[arm] + float(rng.normal(0, 3)), 1)
        chance = 1 / (1 + np.exp(-(0.15 * (30 - baseline) - 0.3 + {"HIGH": 1.2, "LOW": 0.6, "PBO": 0.0}[arm])))
        responder = "Y" if rng.random() < chance else "N"
        grade = ["MILD", "MODERATE", "SEVERE"][int(np.clip(np.round(1 + rng.normal(0, 0.8) - shift[arm] / 6 - 0.5), 0, 2))]
        flares = int(rng.poisson({"HIGH": 0.6, "LOW": 1.0, "PBO": 1.6}[arm]))
        rows = [("SCORE", "Symptom score", baseline, "{score}", 1, "Week 0", "2025-01-06"),
                ("SEV", "Severe at baseline", severe, "", 1, "Week 0", "2025-01-06"),
                ("SCORE", "Symptom score", week12, "{score}", 2, "Week 12", "2025-03-31"),
                ("RESP", "Responder", responder, "", 2, "Week 12", "2025-03-31"),
                ("GRADE", "Global grade", grade, "", 2, "Week 12", "2025-03-31"),
                ("FLARE", "Flares", flares, "{count}", 2, "Week 12", "2025-03-31")]
        for code, test, result, unit, visitnum, visit, date in rows:
            if subject == "TRI-03" and code == "SCORE" and visitnum == 1:
                continue  # one subject without a baseline score: adjusted effects name it
            xs.append(["TRI-001", subject, code, test, result, unit, visitnum, visit, date])
# Adverse events: their own generator, so the tables above stay as they were. Rash only on the high dose:
# LOW vs PBO has no rash in either arm (every ratio "not estimable"); TRI-01 has two headaches (one subject).
events = np.random.default_rng(20260301)
ae = []
for row in dm:
    subject, arm = row[1], row[5]
    seq = 0
    chances = {"Headache": {"HIGH": 0.5, "LOW": 0.35, "PBO": 0.2}, "Nausea": {"HIGH": 0.3, "LOW": 0.2, "PBO": 0.15},
               "Rash": {"HIGH": 0.25, "LOW": 0.0, "PBO": 0.0}}
    for term, chance in chances.items():
        times = 2 if subject == "TRI-01" and term == "Headache" else int(events.random() < chance[arm])
        for _ in range(times):
            seq += 1
            serious = "Y" if term == "Rash" or events.random() < 0.1 else "N"
            start = dt.date(2025, 1, 6) + dt.timedelta(days=7 * seq)
            ae.append(["TRI-001", subject, seq, term.upper(), term, serious, "SEVERE" if serious == "Y" else "MILD",
                       "POSSIBLY RELATED", "RECOVERED/RESOLVED", start.isoformat(), (start + dt.timedelta(days=5)).isoformat()])
for file, header, rows in (
        ("dm.csv", "STUDYID,USUBJID,AGE,SEX,COUNTRY,ARMCD,ARM,ACTARMCD,ACTARM,RFSTDTC,RFENDTC", dm),
        ("ex.csv", "STUDYID,USUBJID,EXTRT,EXDOSE,EXDOSU,EXROUTE,EXSTDTC", ex),
        ("xs.csv", "STUDYID,USUBJID,XSTESTCD,XSTEST,XSORRES,XSORRESU,VISITNUM,VISIT,XSDTC", xs),
        ("ae.csv", "STUDYID,USUBJID,AESEQ,AETERM,AEDECOD,AESER,AESEV,AEREL,AEOUT,AESTDTC,AEENDTC", ae)):
    with open(here / file, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header.split(","))
        writer.writerows(rows)
