"""The study definition: one YAML file in mappings/ describes a whole study.

It is validated on load (pydantic), so a typo in the mapping is reported with its path and line
(``outcomes[3].unit``, see ``problems``) before any data is touched. The values it puts into FHIR
code elements with a required binding (study status, subject status, the genders ``terms.sex`` maps
to) must be codes of their value sets, and units (``outcomes[].unit``, ``terms.dose_unit``) UCUM
units: see ``fhir_codes``. The string below each field describes it in the file's JSON Schema
(``schema``).
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

import yaml
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydantic import (
    AfterValidator,
    GetJsonSchemaHandler,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import StudyDefinitionError
from .adverse_events import AdverseEvents
from .fhir_codes import RequiredBinding, check_ucum
from .model import Coding
from .model import StudyModel as _Model
from .problems import InvalidStudyDefinition, problems_of, suggested, unknown
from .shipped import DEFAULT_STUDY, REPO_ROOT, package_data  # noqa: F401  (also imported from here)


# Values the study file puts into FHIR code elements with a required binding, and UCUM units.
_R4, _R5 = "fhir.resources.R4B", "fhir.resources"
StudyStatus = Annotated[str, RequiredBinding(  # R4 ResearchStudy.status (R5: a text)
    "ResearchStudy.status (R4)", ((_R4, "researchstudy", "ResearchStudy", "status"),))]
SubjectStatus = Annotated[str, RequiredBinding(  # R4 ResearchSubject.status (R5: a coding)
    "ResearchSubject.status (R4)", ((_R4, "researchsubject", "ResearchSubject", "status"),))]
Gender = Annotated[str, RequiredBinding(
    "Patient.gender", ((_R4, "patient", "Patient", "gender"), (_R5, "patient", "Patient", "gender")))]
Ucum = Annotated[str, AfterValidator(check_ucum)]


class Identifier(_Model):
    """The study's registry identifier (ResearchStudy.identifier)."""

    system: str
    """The registry's namespace, a URI (e.g. https://clinicaltrials.gov)."""
    value: str
    """The study's identifier there (e.g. NCT04288102): the STUDYID every table row must hold."""


class Period(_Model):
    """When the study ran (ResearchStudy.period)."""

    start: str
    """First day, an ISO 8601 date (2024-01-01)."""
    end: str | None = None
    """Last day, an ISO 8601 date; left out while the study runs."""


class StudyInfo(_Model):
    """What the study is: the ResearchStudy resource, and the namespaces of the codes and identifiers it makes."""

    key: str
    """A short name for the study, used for directories (e.g. the demo's examples/KEY)."""
    identifier: Identifier
    title: str
    """The study's title (ResearchStudy.title)."""
    description: str
    """A description (ResearchStudy.description); say here when the data are synthetic."""
    status: StudyStatus
    """ResearchStudy.status (R4), a code of its required value set (e.g. completed, active)."""
    phase: str | None = None
    """A code of http://terminology.hl7.org/CodeSystem/research-study-phase (e.g. phase-2)."""
    period: Period
    condition: list[Coding] = []
    """The conditions studied (ResearchStudy.condition), e.g. SNOMED CT codes."""
    citations: list[str] = []
    """Publications of the study, each as a citation text (ResearchStudy.relatedArtifact)."""
    codesystem: str
    """The URI of the study's own CodeSystem: the codes of arms, visits, outcomes and treatments."""
    identifier_base: str
    """The base URI of the study's business identifiers (BASE/subject, BASE/visit, …)."""
    subject_status: SubjectStatus
    """ResearchSubject.status (R4) of every subject, a code of its required value set (e.g. off-study)."""


class Arm(_Model):
    """One arm of the study: ResearchStudy.arm (R4), comparisonGroup (R5)."""

    code: str
    """The arm code: ARMCD and ACTARMCD in the DM table."""
    name: str
    """The arm's name: ARM and ACTARM in the DM table; results name arms by it."""
    type: str
    """A code of http://terminology.hl7.org/CodeSystem/research-study-arm-type (experimental, placebo-comparator,
    active-comparator, …)."""
    description: str
    """What the arm receives."""
    intervention: str
    """The key of its entry in ``interventions``."""


class Dose(_Model):
    """A planned dose."""

    value: float
    """The amount."""
    unit: str
    """Its unit as the EX table writes it: a key of ``terms.dose_unit``."""


class Intervention(_Model):
    """What an arm receives: the EX table's rows of that treatment become MedicationAdministrations."""

    treatment: str
    """The treatment as the EX table writes it (EXTRT); a subject's rows must be its actual arm's."""
    display: str
    """The treatment's name in FHIR (the display of its study code)."""
    dose: Dose
    route: str
    """The route as the EX table writes it: a key of ``terms.route``."""
    days: list[int]
    """The study days (from RFSTDTC, day 0) of the planned administrations."""


class Terms(_Model):
    """How the tables' controlled terms become FHIR codes."""

    sex: dict[str, Gender]
    """DM SEX value → FHIR Patient.gender (male, female, other, unknown), e.g. {M: male, F: female}."""
    route: dict[str, Coding]
    """EX EXROUTE value → the Coding of MedicationAdministration.dosage.route."""
    dose_unit: dict[str, Ucum]
    """EX EXDOSU value → its UCUM unit (e.g. {mg: mg, CELLS: "{cells}"})."""


class Visit(_Model):
    """A scheduled visit: an Encounter per subject; findings at it are compared between the arms."""

    code: str
    """The visit code (in identifiers, results and ``--visit``)."""
    name: str
    """The visit's name: VISIT in the findings tables."""
    visitnum: int | float
    """SDTM VISITNUM: whole (9), or fractional (3.5) for a scheduled visit."""
    day: int
    """The planned study day (from RFSTDTC, day 0)."""
    window: tuple[int, int]
    """The first and last study day of the visit: where a hospital's finding of that date belongs."""


class Unscheduled(_Model):
    """How unscheduled visits (a fractional VISITNUM no scheduled visit has, e.g. 3.1 "UNSCHEDULED 3.1") are kept.

    Each becomes an Encounter whose type is this study code; without this section such rows are rejected.
    """

    code: str = "UNSCHEDULED"
    """The study code typing their Encounters (and in their identifiers: SUBJECT/UNSCHEDULED-3.1)."""
    display: str = "Unscheduled visit"
    """The code's display."""


class AnalysisWindow(_Model):
    """Days relative to RFSTDTC (day 0, as ``visits[].day``) in which a finding counts for a visit in the analysis."""

    from_day: int
    """The window's first day."""
    to_day: int
    """The window's last day."""
    target_day: int | None = None
    """The day a subject's finding nearest to is analysed; default: the visit's day."""

    @model_validator(mode="after")
    def _ordered(self) -> AnalysisWindow:
        if self.from_day > self.to_day:
            raise ValueError(f"from_day {self.from_day} is after to_day {self.to_day}")
        return self


# What an outcome's results are, and the Observation.value[x] each becomes (R4 and R5 alike):
# quantity → valueQuantity, coded and ordinal → valueCodeableConcept, integer → valueInteger,
# boolean (SDTM Y/N) → valueBoolean, datetime → valueDateTime, text → valueString.
OutcomeType = Literal["quantity", "coded", "ordinal", "integer", "boolean", "datetime", "text"]
BOOLEAN_ANSWERS = {"Y": True, "N": False}  # CDISC NY: how a boolean result is written in the table


class Outcome(_Model):
    """A finding measured at visits: one row of a findings table (--TESTCD), one Observation."""

    code: str
    """The test code: --TESTCD in its domain's table."""
    domain: str
    """The SDTM domain whose table holds it (a key of ``tables.findings.files``, e.g. LB, VS, QS)."""
    display: str
    """Its name (--TEST; the display of its study code)."""
    category: str
    """A code of http://terminology.hl7.org/CodeSystem/observation-category (laboratory, vital-signs, survey, …)."""
    type: OutcomeType
    """What a result is: quantity (a number with a unit), coded (one of ``answers``), ordinal (one of ``answers``,
    lowest first), integer (a count), boolean (Y/N), datetime (an event date) or text."""
    unit: Ucum | None = None
    """A quantity's UCUM unit (--ORRESU); required for a quantity, refused for the other types."""
    unit_aliases: dict[str, float] = {}
    """Other units a table may write → the factor converting to ``unit`` (e.g. {g/L: 0.1} for g/dL)."""
    range: tuple[float, float] | None = None
    """The plausible [lowest, highest] value (in ``unit``): a result outside is rejected."""
    answers: dict[str, Coding] = {}
    """A coded or ordinal outcome's results as the table writes them → their Codings (ordinal: lowest first)."""
    event: str | None = None
    """The answer counted as an event in binary comparisons; default: the first answer (Y for boolean)."""
    standard: list[Coding] = []
    """Codings of standard terminologies (e.g. LOINC) added to Observation.code beside the study code."""
    visits: list[str]
    """The codes of the visits it is measured at."""

    @model_validator(mode="after")
    def _type_fields(self) -> Outcome:
        if self.type == "quantity" and not self.unit:
            raise ValueError(f"unit: {self.code}: a quantity needs a unit (UCUM)")
        if self.type in ("coded", "ordinal") and not self.answers:
            raise ValueError(f"answers: {self.code}: {'an' if self.type == 'ordinal' else 'a'} {self.type} outcome needs answers"
                             + (" (listed lowest first: their order is the scale's)" if self.type == "ordinal" else ""))
        if self.type not in ("coded", "ordinal") and self.answers:
            raise ValueError(f"answers: {self.code}: only coded and ordinal outcomes have answers")
        if self.type != "quantity" and (self.unit or self.unit_aliases):
            raise ValueError(f"{'unit' if self.unit else 'unit_aliases'}: {self.code}: only a quantity has a unit (the FHIR value of a {self.type} outcome carries none)")
        if self.range is not None and self.type not in ("quantity", "integer"):
            raise ValueError(f"range: {self.code}: only quantity and integer outcomes have a range")
        if self.event is not None and self.event not in self.answer_keys:
            raise ValueError(f"event: {self.code}: event {self.event!r} is not one of its answers "
                             f"({', '.join(self.answer_keys) or 'none'})")
        return self

    @property
    def answer_keys(self) -> list[str]:
        """The results a table may hold for a coded, ordinal or boolean outcome (Y, N for boolean)."""
        return list(BOOLEAN_ANSWERS) if self.type == "boolean" else list(self.answers)

    @property
    def event_answer(self) -> str:
        """The answer counted as an event in binary analyses: ``event``, else the first answer (Y for boolean)."""
        return self.event or self.answer_keys[0]

    def rank(self, answer: str) -> int:
        """An ordinal answer's place on its scale, 1 for the lowest (the first listed)."""
        return list(self.answers).index(answer) + 1

    def factor_from(self, unit: str | None) -> float | None:
        """The factor converting a value in ``unit`` to this outcome's unit; None if not convertible."""
        return 1.0 if unit == self.unit else self.unit_aliases.get(unit or "")

    def in_range(self, value: float) -> bool:
        """Whether ``value`` (in this outcome's unit) is plausible; true when no range is set."""
        return self.range is None or self.range[0] <= value <= self.range[1]


# Effect keys (README "Analysis" lists each with its method): Woolf OR, exact conditional OR, Mantel-Haenszel OR,
# relative risk (Katz), risk difference (Wald, Newcombe), adjusted OR (logistic); difference of means (pooled, Welch t),
# Hodges-Lehmann, adjusted difference of means (ANCOVA); proportional-odds OR, Mann-Whitney (ordered answers or
# values); rate ratio (counts); Cox hazard ratio, log-rank, Kaplan-Meier medians (time to event).
BinaryEffect = Literal["odds-ratio", "exact-odds-ratio", "odds-ratio-mh", "relative-risk", "risk-difference",
                       "risk-difference-newcombe", "adjusted-odds-ratio"]
ContinuousEffect = Literal["mean-difference", "mean-difference-welch", "hodges-lehmann", "adjusted-mean-difference"]
OrdinalEffect = Literal["proportional-odds", "mann-whitney"]
CountEffect = Literal["rate-ratio"]
TimeToEventEffect = Literal["cox-hazard-ratio", "log-rank", "km-median"]
AnyEffect = BinaryEffect | ContinuousEffect | OrdinalEffect | CountEffect | TimeToEventEffect
# Which outcome types (Outcome.type) each kind of effect applies to. A coded outcome's answers are an ordered
# scale in their YAML order (first = lowest); a quantity's values are their own order. Time-to-event effects apply
# to a time_to_event entry (Study.time_to_event_outcome; estimators in fhir_msc.analysis.survival).
EFFECT_OUTCOME_TYPES: dict[str, set[str]] = {
    **{key: {"coded", "boolean"} for key in get_args(BinaryEffect)},
    **{key: {"quantity", "integer"} for key in get_args(ContinuousEffect)},
    **{key: {"coded", "ordinal", "quantity", "integer"} for key in get_args(OrdinalEffect)},
    "rate-ratio": {"quantity", "integer"},
    **{key: {"time-to-event"} for key in get_args(TimeToEventEffect)},
}


def _arm_set(value: object) -> object:
    if isinstance(value, str) or isinstance(value, list) and all(isinstance(code, str) for code in value):
        return value
    raise ValueError(f"{value!r} is not an arm code or a list of arm codes (pooled)")


ArmSet = Annotated[str | list[str], BeforeValidator(_arm_set)]  # one arm code, or several pooled


def arm_codes(arms: ArmSet) -> tuple[str, ...]:
    """The arm codes of a treatment or control: one arm, or several pooled."""
    return (arms,) if isinstance(arms, str) else tuple(arms)


def arm_label(arms: ArmSet | tuple[str, ...]) -> str:
    """How a treatment or control is named in results: its arm code, or the pooled codes joined by '+'."""
    return "+".join(arm_codes(arms) if isinstance(arms, str) else arms)


NOT_ESTIMABLE = "not estimable"  # how a paper writes an estimate that cannot be computed (e.g. no events in either arm)


class Stated(_Model):
    """A number as the paper writes it: its value, its decimals, and a comparator (``<0.001``).

    A number keeps the decimals it is written with (``67.0``: one, ``0.20``: two), which ``verify`` compares at;
    a quoted string (``"<0.001"``) may add ``<`` or ``>``. (A float built in Python has the decimals of its repr.)
    """

    value: float
    """The number."""
    decimals: int
    """Its decimals as written (0.20: 2)."""
    comparator: Literal["", "<", ">"] = ""
    """< or > before the number ("<0.001"), else empty."""

    _WRITTEN: ClassVar[str] = r"^(\s*|[<>]\s*)[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"  # a string _from_scalar reads

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """As a study file writes it: a number, a string that may start with < or >, or the object."""
        return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": cls._WRITTEN}, handler(core_schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, data: object) -> object:
        if isinstance(data, (dict, Stated)):
            return data
        if isinstance(data, bool) or not isinstance(data, (int, float, str)):
            raise ValueError(f"{data!r} is not a number as a paper writes it (e.g. 46.94, 0.20, <0.001)")
        text = getattr(data, "text", None) or (str(data) if not isinstance(data, float) else repr(data))
        if text.strip() == NOT_ESTIMABLE:
            return cls._not_estimable()
        comparator = text[0] if text[:1] in ("<", ">") else ""
        try:
            number = Decimal(text[len(comparator):].strip())
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a number as a paper writes it (e.g. 46.94, 0.20, <0.001)") from None
        if not number.is_finite():
            raise ValueError(f"{text!r} is not a finite number")
        return {"value": float(number), "decimals": max(0, -int(number.as_tuple().exponent)), "comparator": comparator}

    @classmethod
    def _not_estimable(cls) -> dict:
        raise ValueError(f"{NOT_ESTIMABLE!r} is written only for an estimate, a CI bound or a number needed to treat")


class Estimated(Stated):
    """An estimate, a CI bound or a number needed to treat as the paper writes it: a number (as ``Stated``), or
    ``not estimable`` (value None), which ``verify`` checks the recomputation is too."""

    value: float | None  # type: ignore[assignment]
    """The number; none: not estimable."""

    _WRITTEN: ClassVar[str] = rf"{Stated._WRITTEN}|^\s*{NOT_ESTIMABLE}\s*$"

    @classmethod
    def _not_estimable(cls) -> dict:
        return {"value": None, "decimals": 0}


# Named tests of a published p (README "Published results verify field by field").
PTest = Literal["fisher", "pearson-chi2", "pearson-chi2-yates", "likelihood-ratio", "wald", "cochran-mantel-haenszel",
                "exact-poisson", "t-pooled", "t-welch", "mann-whitney", "wilcoxon", "log-rank"]
_TWO_BY_TWO = ("fisher", "pearson-chi2", "pearson-chi2-yates", "likelihood-ratio")  # tests of the 2×2 table
_TWO_SAMPLE = ("t-pooled", "t-welch", "mann-whitney", "wilcoxon")  # unadjusted tests of two samples of values
_MODEL = ("wald", "likelihood-ratio")  # tests of the treatment coefficient of a fitted model
# The tests whose p belongs to each effect: a published p names one of its entry's effect (or none: verify lists
# those that give it). wald is the effect's own Wald test (z; t on the residual df for ANCOVA); likelihood-ratio of a
# 2×2 effect is the G test, of a fitted model the model with treatment against the model without.
EFFECT_TESTS: dict[str, tuple[str, ...]] = {
    "odds-ratio": ("wald", *_TWO_BY_TWO), "relative-risk": ("wald", *_TWO_BY_TWO),
    "risk-difference": ("wald", *_TWO_BY_TWO), "exact-odds-ratio": _TWO_BY_TWO, "risk-difference-newcombe": _TWO_BY_TWO,
    "odds-ratio-mh": ("cochran-mantel-haenszel",), "adjusted-odds-ratio": _MODEL,
    "mean-difference": _TWO_SAMPLE, "mean-difference-welch": _TWO_SAMPLE, "hodges-lehmann": _TWO_SAMPLE,
    "adjusted-mean-difference": _MODEL, "proportional-odds": _MODEL, "mann-whitney": ("mann-whitney",),
    "rate-ratio": ("exact-poisson",), "cox-hazard-ratio": (*_MODEL, "log-rank"), "log-rank": ("log-rank",),
    "km-median": ("log-rank",),
}
RISK_DIFFERENCES = ("risk-difference", "risk-difference-newcombe")


class PublishedP(_Model):
    """A published p at the paper's precision, and its test when the paper names it.

    Without ``test``, ``verify`` lists the tests of the entry's effect that give it.
    A bare number (``p: 0.03``, ``p: "<0.001"``) is a p whose test is not named.
    """

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """A p as a study file writes it: a number, a string that may start with < or >, or {test, value}."""
        return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": Stated._WRITTEN}, handler(core_schema)]}

    test: PTest | None = None
    """The test the paper names (fisher, t-pooled, wald, …): one of those of the entry's effect."""
    value: Stated
    """The p as the paper writes it (0.03, "<0.001")."""

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, data: object) -> object:
        return {"value": data} if isinstance(data, (int, float, str)) and not isinstance(data, bool) else data


_PER_ARM = ("n", "counts", "proportions", "percents", "means", "sds", "medians", "iqrs")
_BINARY_ONLY = ("counts", "proportions", "percents", "relative_risk_reduction", "number_needed_to_treat")
_CONTINUOUS_ONLY = ("means", "sds", "medians", "iqrs")
# The effects of a 2×2 table, the only ones of adverse-event incidence (no covariates, no strata).
TWO_BY_TWO_EFFECTS = ("odds-ratio", "exact-odds-ratio", "relative-risk", "risk-difference", "risk-difference-newcombe")


def _absent_not_null(schema: dict) -> None:
    """A published entry's optional field is left out, never null (``PublishedResult._not_null``): so in its schema."""
    for field in schema["properties"].values():
        alternatives = field.get("anyOf", [])
        if {"type": "null"} in alternatives and field.get("default", ...) is None:
            alternatives.remove({"type": "null"})
            del field["default"]
            if len(alternatives) == 1:
                field.update(field.pop("anyOf")[0])


class PublishedResult(_Model):
    """A between-arm result as the paper reports it, each number at the paper's precision. It names its outcome (and
    visit) or, with ``adverse_event``, the subjects with at least one adverse event of a kind; every other field is
    optional. Per-arm fields are keyed by the arms compared (an arm code, or pooled arms joined by +).

    ``treatment`` and ``control`` name the arms compared (default: the plan's one comparison);
    ``covariates`` and ``stratum`` override the plan's for this result.
    """

    model_config = ConfigDict(json_schema_extra=_absent_not_null)

    outcome: str | None = None
    """The code of an outcome, a derived endpoint or a time_to_event entry."""
    adverse_event: str | None = None
    """Instead of outcome: subjects with at least one adverse event: any, serious, or an AEDECOD of
    adverse_events.terms."""
    visit: str | None = None
    """The visit code; required for an outcome, none for a time_to_event entry (the whole follow-up)."""
    effect: AnyEffect | None = None
    """The effect reported; default: the plan's for the outcome's type (analysis.effects)."""
    estimate: Estimated | None = None
    """The effect's estimate as written (1.68), or "not estimable"."""
    lower: Estimated | None = None
    """The lower bound of its confidence interval."""
    upper: Estimated | None = None
    """The upper bound of its confidence interval."""
    unit: Literal["percentage-points"] | None = None
    """The unit of a risk difference's estimate and CI; default: a fraction."""
    decimals: int | None = None
    """The decimals estimate and CI are compared at; default: as each is written."""
    p: PublishedP | None = None
    """The p-value: a number (0.03, "<0.001"), or {test, value} when the paper names its test."""
    p_adjusted: Stated | None = None
    """The effect's p adjusted for multiple comparisons in its family (analysis.multiplicity)."""
    relative_risk_reduction: Stated | None = None
    """1 − relative risk, in percent (binary outcomes)."""
    number_needed_to_treat: Estimated | None = None
    """1 / |risk difference| (binary outcomes)."""
    n: dict[str, int] | None = None
    """Per arm: the subjects analysed."""
    counts: dict[str, tuple[int, int]] | None = None
    """Per arm: [events, subjects] (binary outcomes, adverse events)."""
    proportions: dict[str, Stated] | None = None
    """Per arm: events / subjects, a fraction."""
    percents: dict[str, Stated] | None = None
    """Per arm: events / subjects, in percent."""
    means: dict[str, Stated] | None = None
    """Per arm: the mean (continuous outcomes)."""
    sds: dict[str, Stated] | None = None
    """Per arm: the standard deviation."""
    medians: dict[str, Stated] | None = None
    """Per arm: the median (for a time_to_event entry: the Kaplan-Meier median)."""
    iqrs: dict[str, tuple[Stated, Stated]] | None = None
    """Per arm: [first quartile, third quartile]."""
    treatment: ArmSet | None = None
    """The treatment side: an arm code, or a list of arm codes pooled; default: the plan's one comparison."""
    control: ArmSet | None = None
    """The control side, likewise."""
    covariates: list[str] | None = None
    """The covariates of this result's adjusted effect, instead of the plan's."""
    stratum: str | None = None
    """The stratum of this result's Mantel-Haenszel effect, instead of the plan's."""
    source: str = ""
    """Where the paper reports it (e.g. Table 2)."""

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            maybe = info.field_name in ("estimate", "lower", "upper", "number_needed_to_treat")
            raise ValueError("null is not a value a paper writes: "
                             + (f"write {NOT_ESTIMABLE!r} if the paper does, or leave the field out" if maybe
                                else "leave the field out"))
        return value

    @model_validator(mode="after")
    def _names_what(self) -> PublishedResult:
        if (self.outcome is None) == (self.adverse_event is None):
            raise ValueError("give either its outcome (an outcome, derived endpoint or time_to_event code) or "
                             "adverse_event (any, serious or a term of adverse_events)")
        return self

    @property
    def label(self) -> str:
        """What the result is about: its outcome's code, or "adverse events: " and what is counted."""
        return self.outcome if self.outcome is not None else f"adverse events: {self.adverse_event}"

    def problems(self, where: str, outcome: Outcome | None, arms: set[str]) -> list[str]:
        """What does not fit the outcome's type (None: adverse events) or the plan's arms, each at its YAML path
        under ``where``."""
        if outcome is None:
            found = [f"{where}.{name}: does not apply to adverse events (subjects with ≥1 event per arm)"
                     for name in ("visit", "covariates", "stratum", "p_adjusted") if getattr(self, name) is not None]
            return found + self._ci_problems(where) + self._field_problems(where, _CONTINUOUS_ONLY, "adverse events",
                                                                           arms)
        if outcome.type == "time-to-event":
            return self._time_to_event_problems(where, outcome, arms)
        coded = outcome.type in ("coded", "boolean")
        kind = ("binary (coded)" if coded else
                "continuous (quantity)" if outcome.type in ("quantity", "integer") else outcome.type)
        return self._ci_problems(where) + self._field_problems(
            where, _CONTINUOUS_ONLY if coded else _BINARY_ONLY, f"{kind} outcome {outcome.code}", arms)

    def _ci_problems(self, where: str) -> list[str]:
        found = []
        if (self.lower is None) != (self.upper is None):
            found.append(f"{where}: give both lower and upper of the CI, or neither")
        if self.lower is not None and self.estimate is None:
            found.append(f"{where}: a CI needs its estimate")
        return found

    def _field_problems(self, where: str, wrong: tuple[str, ...], what: str, arms: set[str]) -> list[str]:
        """The fields given that do not apply to ``what`` (``wrong``), and per-arm fields keyed by another arm."""
        found = []
        for name in (*_PER_ARM, "relative_risk_reduction", "number_needed_to_treat"):
            given = getattr(self, name)
            if given is None:
                continue
            if name in wrong:
                found.append(f"{where}.{name}: does not apply to {what}")
            if name in _PER_ARM:
                found += [f"{where}.{name}: {arm!r} is neither arm compared: use {' or '.join(sorted(arms))}"
                          for arm in sorted(set(given) - arms)]
        return found

    def _time_to_event_problems(self, where: str, outcome: Outcome, arms: set[str]) -> list[str]:
        found = []
        if self.visit is not None:
            found.append(f"{where}.visit: time-to-event {outcome.code} is over the whole follow-up: give no visit")
        if self.covariates is not None or self.stratum is not None:
            found.append(f"{where}: covariates and stratum do not apply to time-to-event {outcome.code} (unadjusted)")
        wrong = tuple(name for name in (*_PER_ARM, *_BINARY_ONLY) if name not in ("n", "counts", "medians"))
        return found + self._field_problems(where, wrong, f"time-to-event {outcome.code} (n, counts, medians do)", arms)

    def effect_problems(self, where: str, key: str | None) -> list[str]:
        """What does not fit the entry's effect ``key`` (as named, or the plan's): its p's test, its unit, and a
        risk difference outside [−1, 1] without a unit."""
        if key is None:
            return []
        found = []
        if self.p and self.p.test and self.p.test not in EFFECT_TESTS[key]:
            planned = "" if self.effect else " (the plan's effect for this outcome)"
            found.append(f"{where}.p.test: {self.p.test!r} is not a test of {key}{planned}: "
                         f"use {', '.join(EFFECT_TESTS[key])}, or leave test out")
        if key not in RISK_DIFFERENCES:
            if self.unit:
                found.append(f"{where}.unit: {self.unit} is for the estimate and CI of a risk difference, not of {key}")
            return found
        for name in ("estimate", "lower", "upper") if self.unit is None else ():
            stated = getattr(self, name)
            if stated is not None and stated.value is not None and abs(stated.value) > 1:
                found.append(f"{where}.{name}: {stated.value:g} is outside [-1, 1], the range of a risk difference as "
                             "a fraction: if the paper writes percentage points, add unit: percentage-points")
                break
        return found


_EFFECT_TYPES = ("coded", "boolean", "quantity", "integer")  # outcome types the between-arm effects apply to


class Effects(_Model):
    """The effect ``analyze`` reports for each kind of outcome."""

    binary: BinaryEffect = "odds-ratio"
    """Of coded and boolean outcomes (their event answer)."""
    continuous: ContinuousEffect = "mean-difference"
    """Of quantity and integer outcomes."""
    ordinal: OrdinalEffect | None = None
    """Of ordinal outcomes; none: they are compared only where a published entry names an effect."""
    time_to_event: TimeToEventEffect = "cox-hazard-ratio"
    """Of time_to_event entries."""


class DerivedEndpoint(_Model):
    """One value per subject computed from that subject's values of study outcomes.

    ``change``: value at ``visit`` − value at ``baseline`` of ``outcome``; ``percent-change``: that
    change × 100 / the baseline value; ``ratio`` and ``difference``: ``outcomes[0]`` / (−) ``outcomes[1]``
    at ``visit``; ``auc``: trapezoidal area under ``outcome`` over ``visits``, on the visits' planned
    days (``visits[].day``), belonging to the last of them. Subjects lacking a source value (or with
    a zero denominator or baseline) have none.
    """

    code: str
    """Its code (in results; the derived Observations' study code)."""
    display: str
    """Its name."""
    kind: Literal["change", "percent-change", "ratio", "difference", "auc"]
    """How it is computed (see above)."""
    outcome: str | None = None
    """The quantity outcome it is computed from (change, percent-change, auc)."""
    outcomes: tuple[str, str] | None = None
    """The two quantity outcomes of a ratio or difference: [numerator, denominator] or [minuend, subtrahend]."""
    baseline: str | None = None
    """The visit code of the baseline value (change, percent-change)."""
    visit: str | None = None
    """The visit code of the value (change, percent-change, ratio, difference); the derived value belongs to it."""
    visits: list[str] | None = None
    """The visit codes of an auc, in the order of their planned days."""
    unit: Ucum | None = None
    """Its UCUM unit; default: the source unit, % for percent-change, a quotient for ratio, (unit).d for auc."""

    @property
    def at(self) -> str:
        """The visit the derived value belongs to."""
        return self.visits[-1] if self.kind == "auc" and self.visits else self.visit or ""

    @property
    def sources(self) -> list[tuple[str, str]]:
        """The (outcome, visit) pairs a value is computed from."""
        if self.kind == "auc":
            return [(self.outcome or "", v) for v in self.visits or []]
        if self.kind in ("ratio", "difference"):
            return [(code, self.visit or "") for code in self.outcomes or ()]
        return [(self.outcome or "", self.baseline or ""), (self.outcome or "", self.visit or "")]

    def problems(self, where: str, outcomes: dict[str, Outcome], visits: dict[str, Visit]) -> list[str]:
        """What is missing or unknown, each at its YAML path under ``where``."""
        needs = {"change": ("outcome", "baseline", "visit"), "percent-change": ("outcome", "baseline", "visit"),
                 "ratio": ("outcomes", "visit"), "difference": ("outcomes", "visit"), "auc": ("outcome", "visits")}[self.kind]
        found = [f"{where}.{name}: needed for kind {self.kind}" for name in needs if getattr(self, name) is None]
        found += [f"{where}.{name}: not used by kind {self.kind}" for name in ("outcome", "outcomes", "baseline", "visit", "visits")
                  if name not in needs and getattr(self, name) is not None]
        if found:
            return found
        if self.kind == "auc" and len(set(self.visits or [])) < 2:
            found.append(f"{where}.visits: an area needs at least two different visits")
        for name in ("outcome", "outcomes"):
            for index, code in enumerate([getattr(self, name)] if name == "outcome" else getattr(self, name) or []):
                if code is None:
                    continue
                path = f"{where}.{name}" + (f"[{index}]" if name == "outcomes" else "")
                if code not in outcomes:
                    found.append(f"{path}: {unknown('outcome', code, outcomes)}")
                elif outcomes[code].type != "quantity":
                    found.append(f"{path}: {code} is not a quantity outcome")
        for name in ("baseline", "visit", "visits"):
            for index, code in enumerate([getattr(self, name)] if name != "visits" else getattr(self, name) or []):
                if code is not None and code not in visits:
                    found.append(f"{where}.{name}" + (f"[{index}]" if name == "visits" else "") + f": {unknown('visit', code, visits)}")
        if not found and self.kind == "auc" and [visits[v].day for v in self.visits or []] != sorted(
                {visits[v].day for v in self.visits or []}):
            found.append(f"{where}.visits: list the visits in the order of their planned days (visits[].day)")
        if not found and self.kind == "difference" and self.unit is None:
            units = {outcomes[code].unit for code in self.outcomes or ()}
            if len(units) > 1:
                found.append(f"{where}.outcomes: a difference needs one unit, not {' and '.join(sorted(map(str, units)))}")
        return found

    def as_outcome(self, outcomes: dict[str, Outcome]) -> Outcome:
        """The derived endpoint as a quantity outcome at its one visit."""
        first = outcomes[self.outcomes[0] if self.outcomes else self.outcome or ""]
        unit = self.unit
        if unit is None:
            if self.kind == "percent-change":
                unit = "%"
            elif self.kind == "ratio":
                other = str(outcomes[(self.outcomes or ("", ""))[1]].unit)
                # UCUM's / and . bind left to right: a compound divisor needs parentheses
                unit = "1" if other == first.unit else f"{first.unit}/({other})" if set("./") & set(other) else f"{first.unit}/{other}"
            elif self.kind == "auc":
                unit = f"{first.unit}.d"  # (unit).d: UCUM reads ng/mL.d as (ng/mL).d
            else:
                unit = first.unit
        return Outcome(code=self.code, domain=first.domain, display=self.display, category=first.category,
                       type="quantity", unit=unit, visits=[self.at])


class ArmPair(_Model):
    """One comparison: a treatment and a control, each an arm code or a list of arms pooled."""

    treatment: ArmSet
    """An arm code, or a list of arm codes pooled."""
    control: ArmSet
    """An arm code, or a list of arm codes pooled."""


class Multiplicity(_Model):
    """How the plan adjusts p-values for multiple comparisons: ``method`` within each family.

    A family is the treatment-effect comparisons at one visit (time-to-event entries: over the whole
    follow-up), every pair of arms, of the outcomes of one list of ``families`` (none named: every outcome).
    Comparisons at the baseline visit (baseline balance) are in no family.
    """

    method: Literal["holm", "bonferroni", "benjamini-hochberg"]
    """The adjustment."""
    families: dict[str, list[str]] = {}
    """Family name → the codes of its outcomes, derived endpoints and time_to_event entries; none: one family of all."""

    def family(self, outcome: str) -> str | None:
        """The name of the family ``outcome`` is in ("" when no family is named: all are in one), None if in none."""
        if not self.families:
            return ""
        return next((name for name, codes in self.families.items() if outcome in codes), None)


class AnalysisPlan(_Model):
    """What ``analyze`` compares: the pairs of arms, the effects, and what they are adjusted or stratified by.

    The pairs are ``comparisons`` when given; else ``treatment`` vs ``control``; else, with only
    ``control`` given, each other arm vs the control.
    """

    treatment: ArmSet | None = None
    """The treatment: an arm code, or a list of arm codes pooled; none: each other arm vs the control."""
    control: ArmSet
    """The control: an arm code, or a list of arm codes pooled."""
    comparisons: list[ArmPair] = []
    """The pairs compared, instead of treatment vs control."""
    alpha: float = 0.05
    """1 − the confidence level of the intervals."""
    windows: dict[str, AnalysisWindow] = {}
    """Visit code → the days (from RFSTDTC) in which a finding counts for that visit, the nearest the target day."""
    effects: Effects = Effects()
    baseline: str | None = None
    """The visit code of baseline values (covariates baseline and OUTCOME); its comparisons are baseline balance."""
    covariates: list[str] = []
    """Of the adjusted effects (adjusted-odds-ratio, adjusted-mean-difference, proportional-odds): age, sex, baseline,
    an outcome code (at the baseline visit) or OUTCOME@VISIT."""
    outcome_covariates: dict[str, list[str]] = {}
    """Outcome code → its covariates instead of ``covariates`` ([]: unadjusted)."""
    stratum: str | None = None
    """The stratum of odds-ratio-mh: sex, or a coded outcome (at the baseline visit, or OUTCOME@VISIT)."""
    better: dict[str, Literal["higher", "lower"]] = {}
    """Outcome code → whether a higher value (or more events) is better: labels the forest plot's sides."""
    derived: list[DerivedEndpoint] = []
    """Endpoints computed from the outcomes (change from baseline, ratio, area under the curve, …)."""
    multiplicity: Multiplicity | None = None
    """How p-values are adjusted for multiple comparisons; none: not adjusted."""
    published: list[PublishedResult] = []
    """The paper's results, which ``verify`` recomputes field by field."""

    def pairs(self, arms: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Every comparison as (treatment codes, control codes), given the study's arm codes in order."""
        if self.comparisons:
            return [(arm_codes(p.treatment), arm_codes(p.control)) for p in self.comparisons]
        control = arm_codes(self.control)
        if self.treatment is not None:
            return [(arm_codes(self.treatment), control)]
        return [((arm,), control) for arm in arms if arm not in control]

    def covariates_for(self, outcome: str) -> list[str]:
        """The covariates of an outcome's adjusted effects: its ``outcome_covariates`` entry, else ``covariates``."""
        return self.outcome_covariates.get(outcome, self.covariates)

    def adverse_event_effect(self, named: str | None) -> str:
        """The effect of a published adverse-event entry: as it names it, else the plan's binary effect when that is
        one of a 2×2 table, else odds-ratio (incidence has no covariates or strata)."""
        return named or (self.effects.binary if self.effects.binary in TWO_BY_TWO_EFFECTS else "odds-ratio")

    def effect_for(self, outcome_type: str) -> str | None:
        """The plan's effect for an outcome type (``effects``); None for an ordinal one without ``effects.ordinal``."""
        return {"coded": self.effects.binary, "boolean": self.effects.binary, "quantity": self.effects.continuous,
                "integer": self.effects.continuous, "ordinal": self.effects.ordinal,
                "time-to-event": self.effects.time_to_event}.get(outcome_type)


def _adjusted_p_problems(where: str, result: PublishedResult, plan: AnalysisPlan) -> list[str]:
    """Why a published adjusted p cannot be recomputed: no adjustment planned, baseline balance, or in no family."""
    if plan.multiplicity is None:
        return [f"{where}: name the adjustment in analysis.multiplicity (method: holm, bonferroni or benjamini-hochberg)"]
    if result.visit is not None and result.visit == plan.baseline:
        return [f"{where}: {result.visit} is the baseline visit: its comparisons are baseline balance, in no "
                "multiplicity family"]
    if plan.multiplicity.family(result.outcome) is None:
        return [f"{where}: {result.outcome} is in no family of analysis.multiplicity.families "
                f"({', '.join(plan.multiplicity.families)})"]
    return []


DM_COVARIATES = ("age", "sex")  # the DM columns the analysis frame carries


class TimeToEvent(_Model):
    """A per-subject duration from RFSTDTC to an event, or to the censoring date, compared over the whole follow-up."""

    code: str
    """Its code (in results and published entries)."""
    display: str
    """Its name."""
    event: str
    """The outcome whose value is the event: a datetime one (its date), or a coded, ordinal or boolean one (the date
    of its event answer)."""
    censor: Literal["end", "last-contact"] = "end"
    """Where a subject without the event is censored: RFENDTC (the last contact where it is empty), or the last
    contact (the subject's latest finding)."""


class SubjectTable(_Model):
    """A table with a row per subject (DM) or per administration (EX)."""

    file: str
    """Its file in the tables directory (.csv, .xpt or .json)."""
    columns: dict[str, str]
    """fhir-msc's name of each variable → the table's column (e.g. {subject: USUBJID})."""


class FindingsTables(_Model):
    """The findings domains: one table per SDTM domain, a row per subject, visit and test."""

    files: dict[str, str]
    """Domain → its file (e.g. {LB: lb.csv, VS: vs.csv}); the outcomes' domains."""
    columns: dict[str, str]
    """The columns every domain's table shares: study, subject, visitnum, visit → their names."""
    suffixes: dict[str, str]
    """The domain's own columns, named domain + suffix: testcd, test, result, unit, date (and optionally
    status, reason) → their suffixes (e.g. {testcd: TESTCD}: LBTESTCD)."""


class Tables(_Model):
    """Where the trial tables are and how their columns are named (SDTM-shaped)."""

    dm: SubjectTable
    """Demographics: study, subject, age, sex, country, arm_code, arm, actual_arm_code, actual_arm, start (RFSTDTC),
    end (RFENDTC)."""
    ex: SubjectTable
    """Exposure: study, subject, treatment, dose, dose_unit, route, date."""
    findings: FindingsTables


_DM_FIELDS = {"study", "subject", "age", "sex", "country", "arm_code", "arm",
              "actual_arm_code", "actual_arm", "start", "end"}
_EX_FIELDS = {"study", "subject", "treatment", "dose", "dose_unit", "route", "date"}
_FINDING_FIELDS = {"study", "subject", "visitnum", "visit"}
_FINDING_SUFFIXES = {"testcd", "test", "result", "unit", "date"}


class Study(_Model):
    """A validated study definition; attribute names follow the YAML keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    study: StudyInfo
    arms: list[Arm]
    """The arms, each a code of the DM table's ARMCD."""
    interventions: dict[str, Intervention]
    """Key (an arm's ``intervention``) → what the arm receives."""
    terms: Terms
    visits: list[Visit]
    """The scheduled visits."""
    unscheduled: Unscheduled | None = None
    """Keep unscheduled visits (a fractional VISITNUM no scheduled visit has); without it their rows are rejected."""
    outcomes: list[Outcome]
    """The findings measured at visits."""
    time_to_event: list[TimeToEvent] = []
    """Durations from RFSTDTC to an event, compared over the whole follow-up."""
    tables: Tables
    analysis: AnalysisPlan | None = None
    """What ``analyze`` compares and ``verify`` checks; none: nothing is compared."""
    adverse_events: AdverseEvents | None = None
    """The AE table, if the study has one."""
    anchors: dict | None = None
    """Any YAML, ignored: a place to define YAML anchors (&name) used elsewhere in the file."""
    _file: Path | None = PrivateAttr(None)
    _sha256: str | None = PrivateAttr(None)

    @property
    def file(self) -> Path | None:
        """The YAML file this definition was loaded from (None if built in memory)."""
        return self._file

    @property
    def sha256(self) -> str | None:
        """SHA-256 of the YAML file's bytes: which definition produced a result."""
        return self._sha256

    @model_validator(mode="after")
    def _cross_references(self) -> Study:
        problems = []
        visit_codes = {v.code for v in self.visits}
        for index, arm in enumerate(self.arms):
            if arm.intervention not in self.interventions:
                problems.append(f"arms[{index}].intervention: {unknown('intervention', arm.intervention, self.interventions)}"
                                " (a key of interventions)")
        for key, intervention in self.interventions.items():
            if intervention.route not in self.terms.route:
                problems.append(f"interventions.{key}.route: {unknown('route', intervention.route, self.terms.route)}"
                                " (a key of terms.route)")
            if intervention.dose.unit not in self.terms.dose_unit:
                problems.append(f"interventions.{key}.dose.unit: "
                                f"{unknown('dose unit', intervention.dose.unit, self.terms.dose_unit)} (a key of terms.dose_unit)")
        for index, outcome in enumerate(self.outcomes):
            if outcome.domain not in self.tables.findings.files:
                problems.append(f"outcomes[{index}].domain: {outcome.code}: domain {outcome.domain} has no file in "
                                "tables.findings.files" + suggested(outcome.domain, self.tables.findings.files))
            for number, visit in enumerate(outcome.visits):
                if visit not in visit_codes:
                    problems.append(f"outcomes[{index}].visits[{number}]: {outcome.code}: "
                                    f"{unknown('visit', visit, visit_codes)}")
        problems += self._visit_and_event_problems()
        for name, fields, given in (
            ("tables.dm.columns", _DM_FIELDS, self.tables.dm.columns),
            ("tables.ex.columns", _EX_FIELDS, self.tables.ex.columns),
            ("tables.findings.columns", _FINDING_FIELDS, self.tables.findings.columns),
            ("tables.findings.suffixes", _FINDING_SUFFIXES, self.tables.findings.suffixes),
        ):
            if missing := fields - set(given):
                problems.append(f"{name}: missing {', '.join(sorted(missing))}")
        for section, codes in (("arms", [a.code for a in self.arms]), ("visits", [v.code for v in self.visits]),
                               ("outcomes", [o.code for o in self.outcomes])):
            problems += [f"{section}[{index}].code: {code!r} is also the code of {section}[{codes.index(code)}]: "
                         "codes are unique" for index, code in enumerate(codes) if codes.index(code) != index]
        if self.analysis:
            for index, endpoint in enumerate(self.analysis.derived):
                problems += endpoint.problems(f"analysis.derived[{index}]", self.outcome_by_code, self.visit_by_code)
            analysed = [o.code for o in self.outcomes] + [d.code for d in self.analysis.derived]
            if len(analysed) != len(set(analysed)):
                problems.append("analysis.derived: a derived code repeats an outcome's or another derived code")
            if problems:  # the plan's checks below read the derived endpoints as outcomes
                raise ValueError("\n".join(problems))
            problems += self._plan_problems(self.analysis, visit_codes)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _visit_and_event_problems(self) -> list[str]:
        """Unscheduled visits, analysis windows and time-to-event outcomes that do not fit the rest."""
        problems = []
        if self.unscheduled and self.unscheduled.code in self.visit_by_code:
            problems.append(f"unscheduled.code {self.unscheduled.code!r} is also a scheduled visit code")
        windows = self.analysis.windows if self.analysis else {}
        spans = []
        for code, window in windows.items():
            if code not in self.visit_by_code:
                problems.append(f"analysis.windows.{code}: {unknown('visit', code, self.visit_by_code)}")
            spans.append((window.from_day, window.to_day, code))
        spans.sort()
        problems += [f"analysis.windows: {a[2]} and {b[2]} overlap (days {b[0]}-{a[1]}): a finding must fall in one"
                     for a, b in zip(spans, spans[1:]) if b[0] <= a[1]]
        for index, tte in enumerate(self.time_to_event):
            source = self.outcome_by_code.get(tte.event)
            if source is None or source.type not in ("datetime", "coded", "ordinal", "boolean"):
                problems.append(f"time_to_event[{index}].event: {tte.event!r} is not a datetime, coded, ordinal or "
                                "boolean outcome of this study")
            if tte.code in self.outcome_by_code:
                problems.append(f"time_to_event[{index}].code: {tte.code!r} is also an outcome code")
        return problems

    def _plan_problems(self, plan: AnalysisPlan, visit_codes: set[str]) -> list[str]:
        problems = []
        known = {a.code for a in self.arms}
        sides = [("analysis.treatment", plan.treatment), ("analysis.control", plan.control)]
        sides += [(f"analysis.comparisons[{i}].{role}", getattr(pair, role))
                  for i, pair in enumerate(plan.comparisons) for role in ("treatment", "control")]
        sides += [(f"analysis.published[{i}].{role}", getattr(result, role))
                  for i, result in enumerate(plan.published) for role in ("treatment", "control")]
        for where, arms in sides:
            for code in arm_codes(arms) if arms is not None else ():
                if code not in known:
                    problems.append(f"{where}: {unknown('arm', code, sorted(known))}")
        pairs = plan.pairs([a.code for a in self.arms])
        for index, (treatment, control) in enumerate(pairs):
            if set(treatment) & set(control) or not treatment:
                problems.append(f"analysis: comparison {index} ({arm_label(treatment)} vs {arm_label(control)}) "
                                "needs a treatment and a control without an arm in both")
        if plan.baseline is not None and plan.baseline not in visit_codes:
            problems.append(f"analysis.baseline: {unknown('visit', plan.baseline, visit_codes)}")
        compared = [*self.analysed_outcome_by_code, *(entry.code for entry in self.time_to_event)]
        for code in plan.better:
            if code not in compared:
                problems.append(f"analysis.better.{code}: {unknown('outcome', code, compared)}")
        problems += self._covariate_problems("analysis.covariates", plan.covariates, plan, None)
        for code, names in plan.outcome_covariates.items():
            outcome = self.analysed_outcome_by_code.get(code)
            if outcome is None:
                problems.append(f"analysis.outcome_covariates.{code}: {unknown('outcome', code, self.analysed_outcome_by_code)}")
            else:
                problems += self._covariate_problems(f"analysis.outcome_covariates.{code}", names, plan, outcome)
        problems += self._stratum_problems("analysis.stratum", plan.stratum, plan)
        problems += self._multiplicity_problems(plan)
        for index, result in enumerate(plan.published):
            problems += self._published_problems(f"analysis.published[{index}]", result, plan, pairs, visit_codes)
        return problems

    def _multiplicity_problems(self, plan: AnalysisPlan) -> list[str]:
        """Family members that are no outcome of the study, or are in two families."""
        if plan.multiplicity is None:
            return []
        known = {*self.analysed_outcome_by_code, *(entry.code for entry in self.time_to_event)}
        problems, family_of = [], {}
        for name, codes in plan.multiplicity.families.items():
            where = f"analysis.multiplicity.families.{name}"
            if not codes:
                problems.append(f"{where}: list the outcomes of the family")
            for index, code in enumerate(codes):
                if code not in known:
                    problems.append(f"{where}[{index}]: {unknown('outcome', code, known)}")
                elif code in family_of:
                    problems.append(f"{where}[{index}]: {code} is already in family {family_of[code]}: an outcome is in "
                                    "one family")
                else:
                    family_of[code] = name
        return problems

    def _published_problems(self, where: str, result: PublishedResult, plan: AnalysisPlan,
                            pairs: list[tuple[tuple[str, ...], tuple[str, ...]]], visit_codes: set[str]) -> list[str]:
        """What does not fit in one published entry, each at its YAML path under ``where``."""
        outcome = None if result.outcome is None else (self.analysed_outcome_by_code.get(result.outcome)
                                                       or self.time_to_event_outcome(result.outcome))
        if result.adverse_event is not None:
            problems = self._adverse_event_problems(where, result, plan)
            if problems:
                return problems
            key = plan.adverse_event_effect(result.effect)
        elif outcome is not None and outcome.type == "time-to-event":
            if result.effect is not None and "time-to-event" not in EFFECT_OUTCOME_TYPES[result.effect]:
                return [f"{where}.effect: {result.effect!r} does not apply to time-to-event outcome "
                        f"{outcome.code}: use {', '.join(get_args(TimeToEventEffect))}"]
            key = result.effect or plan.effect_for(outcome.type)
        elif outcome is not None and result.visit is None:
            return [f"{where}.visit: give the visit of {outcome.code} (only a time_to_event entry has none)"]
        elif outcome is None:
            return [f"{where}.outcome: {unknown('outcome', result.outcome, self.analysed_outcome_by_code)}"]
        elif result.visit not in visit_codes:
            return [f"{where}.visit: {unknown('visit', result.visit, visit_codes)}"]
        elif outcome.type not in (EFFECT_OUTCOME_TYPES[result.effect] if result.effect else _EFFECT_TYPES):
            kind = {"coded": "binary (coded)", "boolean": "binary (coded)", "quantity": "continuous (quantity)",
                    "integer": "continuous (quantity)"}.get(outcome.type, outcome.type)
            return [f"{where}.effect: {result.effect!r} does not apply to {kind} outcome {outcome.code}"]
        else:
            key = result.effect or plan.effect_for(outcome.type)
        problems = []
        if (result.treatment is None) != (result.control is None):
            problems.append(f"{where}: give both treatment and control, or neither")
        elif result.treatment is None and len(pairs) != 1:
            problems.append(f"{where}: name its treatment and control: the plan compares {len(pairs)} pairs")
        pair = ((arm_codes(result.treatment), arm_codes(result.control))
                if result.treatment is not None and result.control is not None else pairs[0] if pairs else None)
        labels = {arm_label(side) for side in pair} if pair else set()
        problems += result.problems(where, outcome, labels) + result.effect_problems(where, key)
        if result.covariates is not None and outcome is not None:
            problems += self._covariate_problems(f"{where}.covariates", result.covariates, plan, outcome)
        if result.p_adjusted is not None and outcome is not None:
            problems += _adjusted_p_problems(f"{where}.p_adjusted", result, plan)
        return problems + self._stratum_problems(f"{where}.stratum", result.stratum, plan)

    def _adverse_event_problems(self, where: str, result: PublishedResult, plan: AnalysisPlan) -> list[str]:
        """An adverse-event entry needs the adverse_events section, one of its kinds, and a 2×2 effect."""
        if self.adverse_events is None:
            return [f"{where}.adverse_event: the study file has no adverse_events section to count them from"]
        kinds = ["any", "serious", *self.adverse_events.terms]
        if result.adverse_event not in kinds:
            return [f"{where}.adverse_event: {unknown('kind of adverse event', result.adverse_event, kinds)}"]
        if result.effect is not None and result.effect not in TWO_BY_TWO_EFFECTS:
            return [f"{where}.effect: adverse events are compared by the effects of their 2×2 table, not "
                    f"{result.effect}: name one of {', '.join(TWO_BY_TWO_EFFECTS)}"]
        if result.effect is None and result.estimate is not None and plan.effects.binary not in TWO_BY_TWO_EFFECTS:
            return [f"{where}.effect: name the effect of this estimate: the plan's binary effect "
                    f"({plan.effects.binary}) is not one of a 2×2 table ({', '.join(TWO_BY_TWO_EFFECTS)})"]
        return []

    def _covariate_problems(self, where: str, covariates: list[str], plan: AnalysisPlan,
                            outcome: Outcome | None) -> list[str]:
        problems = []
        for index, name in enumerate(covariates):
            problem = self.covariate_problem(name, plan)
            if problem:
                problems.append(f"{where}[{index}]: {problem}")
            elif outcome is not None and name in (outcome.code, f"{outcome.code}@{plan.baseline}"):
                problems.append(f"{where}[{index}]: write 'baseline' for the outcome's own baseline value")
        return problems

    def covariate_problem(self, name: str, plan: AnalysisPlan) -> str:
        """Why ``name`` is not a covariate (or stratum) of this study; "" when it is.

        A covariate is a DM column (``age``, ``sex``), ``baseline`` (the analysed outcome at the
        plan's baseline visit), an outcome code (that outcome at the baseline visit) or
        ``OUTCOME@VISIT``.
        """
        code, _, visit = name.partition("@")
        use = "use age, sex, baseline, an outcome code (at analysis.baseline) or OUTCOME@VISIT"
        if name in DM_COVARIATES:
            return ""
        if code not in self.outcome_by_code and name != "baseline":
            return f"unknown covariate {name!r}{suggested(name, [*DM_COVARIATES, 'baseline', *self.outcome_by_code])}: {use}"
        if visit and visit not in self.visit_by_code:
            return f"covariate {name!r}: {unknown('visit', visit, self.visit_by_code)}"
        if not visit and plan.baseline is None:
            return f"covariate {name!r} needs analysis.baseline (the baseline visit), or write {name}@VISIT"
        return ""

    def _stratum_problems(self, where: str, stratum: str | None, plan: AnalysisPlan) -> list[str]:
        if stratum is None or stratum == "sex":
            return []
        if stratum in ("age", "baseline"):
            return [f"{where}: {stratum!r} cannot be a stratum: use sex, or a coded outcome (at analysis.baseline "
                    "or as OUTCOME@VISIT)"]
        if problem := self.covariate_problem(stratum, plan):
            return [f"{where}: {problem.replace('covariate', 'stratum')}"]
        if self.outcome_by_code[stratum.partition("@")[0]].type != "coded":
            return [f"{where}: stratum {stratum!r} is not a coded outcome: strata need categories"]
        return []

    # --- look-ups used by the mappers -------------------------------------------------

    @cached_property
    def arm_by_code(self) -> dict[str, Arm]:
        return {arm.code: arm for arm in self.arms}

    @cached_property
    def arm_by_name(self) -> dict[str, Arm]:
        return {arm.name: arm for arm in self.arms}

    @cached_property
    def visit_by_code(self) -> dict[str, Visit]:
        return {visit.code: visit for visit in self.visits}

    @cached_property
    def visit_by_num(self) -> dict[int | float, Visit]:
        return {visit.visitnum: visit for visit in self.visits}

    def visit_key(self, visitnum: int | float) -> str:
        """The visit part of business identifiers: a scheduled visit's code, else UNSCHEDULED-3.1 (unscheduled.code)."""
        visit = self.visit_by_num.get(visitnum)
        if visit is not None:
            return visit.code
        return f"{self.unscheduled.code if self.unscheduled else 'UNSCHEDULED'}-{visitnum}"

    @cached_property
    def outcome_by_code(self) -> dict[str, Outcome]:
        return {outcome.code: outcome for outcome in self.outcomes}

    @cached_property
    def analysed_outcomes(self) -> list[Outcome]:
        """The outcomes, then the derived endpoints of the analysis plan as quantity outcomes."""
        derived = self.analysis.derived if self.analysis else []
        return self.outcomes + [endpoint.as_outcome(self.outcome_by_code) for endpoint in derived]

    @cached_property
    def analysed_outcome_by_code(self) -> dict[str, Outcome]:
        return {outcome.code: outcome for outcome in self.analysed_outcomes}

    def time_to_event_outcome(self, code: str) -> Outcome | None:
        """A time_to_event entry as an outcome of type ``time-to-event`` (for published results), None if no such entry."""
        entry = next((t for t in self.time_to_event if t.code == code), None)
        if entry is None:
            return None
        return Outcome.model_construct(code=entry.code, domain="", display=entry.display, category="", type="time-to-event",
                                       unit=None, unit_aliases={}, range=None, answers={}, event=None, standard=[], visits=[])

    @cached_property
    def intervention_by_treatment(self) -> dict[str, tuple[str, Intervention]]:
        return {i.treatment: (key, i) for key, i in self.interventions.items()}

    def outcomes_in(self, domain: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.domain == domain]

    def system(self, kind: str) -> str:
        """The identifier system for business identifiers of one kind (subject, visit…)."""
        return f"{self.study.identifier_base}/{kind}"


class _WrittenFloat(float):
    """A YAML float that remembers how it was written (``0.20``), for :class:`Stated`."""

    text: str


class _StudyLoader(yaml.SafeLoader):
    """YAML's safe loader, keeping the text of floats (a paper's precision is in its trailing zeros)."""


def _written_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    number = _WrittenFloat(loader.construct_yaml_float(node))
    number.text = node.value
    return number


_StudyLoader.add_constructor("tag:yaml.org,2002:float", _written_float)


def load_study(path: str | Path = DEFAULT_STUDY) -> Study:
    """Read and validate a study definition YAML file.

    A file that is not a valid definition raises :class:`InvalidStudyDefinition`: each mistake on a
    line of its own, with its YAML path and line (``study/problems.py``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
        raw = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise StudyDefinitionError(f"{path}: study definition not found: give the path of a study YAML file "
                                  "(`fhir-msc init DIR` writes one to start from)") from None
    except UnicodeDecodeError as exc:
        raise StudyDefinitionError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise StudyDefinitionError(f"{path}:{_yaml_error_where(exc)} not valid YAML: {_yaml_error_what(exc)}") from None
    if not isinstance(raw, dict):
        raise StudyDefinitionError(f"{path}: expected a mapping of study, arms, visits, outcomes, tables")
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        raise InvalidStudyDefinition(path, problems_of(exc, raw, text, Study)) from None
    study._file, study._sha256 = path.resolve(), hashlib.sha256(data).hexdigest()
    return study


def _yaml_error_where(error: yaml.YAMLError) -> str:
    """``LINE:`` of a YAML syntax error (1-based), empty when PyYAML does not say."""
    mark = getattr(error, "problem_mark", None)
    return f"{mark.line + 1}:" if mark is not None else ""


def _yaml_error_what(error: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: its problem and context, without PyYAML's excerpt of the file."""
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    return "; ".join(part for part in parts if part) or str(error).splitlines()[0]
