"""SDTM AE rows ↔ FHIR AdverseEvent, R4 and R5 (elements checked against both versions' StructureDefinitions).

One AdverseEvent per AE row, id from the business identifier ``USUBJID/AESEQ``:

=====================  =======================================  ==========================================
AE variable            R4                                       R5
=====================  =======================================  ==========================================
(the row)              actuality ``actual``                     actuality ``actual``; status ``completed``
                                                                (``in-progress`` while AEENDTC is empty)
USUBJID                subject → Patient                        subject → Patient
STUDYID                study → ResearchStudy                    study → ResearchStudy
AETERM / AEDECOD       event.text / event.coding                code.text / code.coding
AESER                  seriousness                              seriousness
AESEV                  severity (required binding)              extension ``…/4.0/…-AdverseEvent.severity``
                                                                (R5 has no severity element)
AEREL                  suspectEntity.causality.assessment,      suspectEntity.causality.entityRelatedness,
                       instance: the subject's study treatment  instanceCodeableConcept: the treatment code
AEOUT                  outcome (required binding)               outcome
AESTDTC / AEENDTC      date; extension ``…/5.0/…-AdverseEvent   occurrencePeriod (occurrenceDateTime
                       .occurrence`` valuePeriod (start, end)   without an end)
=====================  =======================================  ==========================================

The two extensions follow FHIR's cross-version extension pattern (``http://hl7.org/fhir/[version]/
StructureDefinition/extension-[element]``), so each version carries what the other has an element for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..study.definition import Study
from ..tables.ae import AdverseEventRecord

if TYPE_CHECKING:
    from .mapping import FhirBuilder

Resource = dict[str, Any]
SEVERITY_R4_IN_R5 = "http://hl7.org/fhir/4.0/StructureDefinition/extension-AdverseEvent.severity"
OCCURRENCE_R5_IN_R4 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.occurrence"


def adverse_event(builder: FhirBuilder, record: AdverseEventRecord, treatment: str) -> Resource:
    """The AdverseEvent of one AE row (``treatment``: the subject's EXTRT, the suspect)."""
    study: Study = builder.study
    ae = study.adverse_events
    r5 = builder.version.is_r5
    resource = builder._identified("AdverseEvent", "adverse-event", f"{record.subject}/{record.seq}")
    if r5:
        resource["status"] = "completed" if record.end else "in-progress"
    else:  # R4 AdverseEvent.identifier is 0..1: one Identifier, not a list
        resource["identifier"] = resource["identifier"][0]
    resource["actuality"] = "actual"
    resource["code" if r5 else "event"] = {"coding": [ae.terms[record.decod].as_fhir()], "text": record.term}
    resource["subject"] = {"reference": builder.ref("Patient", "subject", record.subject)}
    period = {"start": record.start, **({"end": record.end} if record.end else {})}
    if r5:
        resource["occurrencePeriod" if record.end else "occurrenceDateTime"] = period if record.end else record.start
    else:
        resource["date"] = record.start
        if record.end:
            resource["extension"] = [{"url": OCCURRENCE_R5_IN_R4, "valuePeriod": period}]
    resource["seriousness"] = {"coding": [ae.serious[record.serious].as_fhir()], "text": record.serious}
    severity = {"coding": [ae.severity[record.severity].as_fhir()], "text": record.severity}
    if r5:
        resource["extension"] = [{"url": SEVERITY_R4_IN_R5, "valueCodeableConcept": severity}]
    else:
        resource["severity"] = severity
    outcome = {"coding": [ae.outcome[record.outcome].as_fhir()], "text": record.outcome}
    resource["outcome"] = [outcome] if r5 else outcome
    resource["study"] = [{"reference": builder.study_ref}]
    related = {"coding": [ae.related[record.related].as_fhir()], "text": record.related}
    _, intervention = study.intervention_by_treatment[treatment]
    product = builder._study_code(treatment, intervention.display)
    if r5:
        resource["suspectEntity"] = [{"instanceCodeableConcept": {"coding": [product]},
                                      "causality": {"entityRelatedness": related}}]
    else:  # R4: instance is a Reference; the study treatment has no resource of its own, so it is named by identifier
        resource["suspectEntity"] = [{"instance": {"type": "Medication", "identifier": {
            "system": study.study.codesystem, "value": treatment}, "display": intervention.display},
            "causality": [{"assessment": related}]}]
    return resource


def _term(concept: Any, codings: dict[str, Any]) -> str | None:
    """The study term whose Coding (system and code) is in ``concept``; None if none is."""
    codes = {(c.get("system"), c.get("code")) for c in concept.get("coding", [])}
    return next((term for term, coding in codings.items() if (coding.system, coding.code) in codes), None)


def read_adverse_event(study: Study, resource: Resource, subject: str, seq: int) -> AdverseEventRecord | str:
    """The AE row of an AdverseEvent of this study (R4 or R5), or the reason it cannot be one.

    Raises AttributeError, TypeError, KeyError… on elements of the wrong JSON shape (the caller counts
    the resource as not readable).
    """
    ae = study.adverse_events
    r5 = "code" in resource or "status" in resource
    concept = resource.get("code" if r5 else "event", {})
    extensions = {e.get("url"): e for e in resource.get("extension", [])}
    severity_concept = (extensions.get(SEVERITY_R4_IN_R5, {}).get("valueCodeableConcept", {}) if r5
                        else resource.get("severity", {}))
    outcome = resource.get("outcome", [] if r5 else {})
    suspect = (resource.get("suspectEntity") or [{}])[0]
    causality = suspect.get("causality", {}) if r5 else (suspect.get("causality") or [{}])[0]
    terms = {"AEDECOD": _term(concept, ae.terms), "AESER": _term(resource.get("seriousness", {}), ae.serious),
             "AESEV": _term(severity_concept, ae.severity),
             "AEOUT": _term((outcome or [{}])[0] if r5 else outcome, ae.outcome),
             "AEREL": _term(causality.get("entityRelatedness" if r5 else "assessment", {}), ae.related)}
    if missing := [name for name, term in terms.items() if term is None]:
        return f"no code of this study's adverse_events terms ({', '.join(missing)})"
    if r5:
        period = resource.get("occurrencePeriod") or {"start": resource.get("occurrenceDateTime", "")}
    else:
        period = extensions.get(OCCURRENCE_R5_IN_R4, {}).get("valuePeriod") or {"start": resource.get("date", "")}
    start, end, text = period.get("start", ""), period.get("end", ""), concept.get("text", "")
    if not all(isinstance(v, str) for v in (start, end, text)):
        raise TypeError("dates and term are not strings")
    if not start:
        return "no onset date (AESTDTC)"
    return AdverseEventRecord(subject=subject, seq=seq, term=text or terms["AEDECOD"], decod=terms["AEDECOD"],
                              serious=terms["AESER"], severity=terms["AESEV"], related=terms["AEREL"],
                              outcome=terms["AEOUT"], start=start, end=end)
