"""Derived values written back as FHIR Observations that name their sources (``derivedFrom``).

Each derived value (see :mod:`.derived`) becomes one Observation with the endpoint's code in
the study's code system, a ``valueQuantity`` in the endpoint's UCUM unit, and ``derivedFrom``
referencing the Observations it was computed from. Subject, encounter, date, category, study
extension and tags are those of the source Observation at the visit the value belongs to. Its
id is derived from its business identifier (subject/visit/code) as for mapped Observations, so
writing the same values again changes nothing and a changed source updates the same resource.
Analysis never reads them back: derived values are always recomputed from their sources.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..fhir.mapping import UCUM, resource_id
from ..store.ndjson import Store
from ..study.definition import Study
from .derived import values

Resource = dict[str, Any]
COPIED = ("meta", "extension", "category", "subject", "encounter", "effectiveDateTime")


def derived_observations(study: Study, store: Store, frame: pd.DataFrame) -> tuple[list[Resource], list[str]]:
    """The Observations of every derived value of ``frame`` (built from ``store``), and the business
    identifiers of derived Observations in the store that these values no longer include (stale)."""
    system = study.system("observation")
    derived_codes = {endpoint.code for endpoint in study.analysis.derived} if study.analysis else set()
    sources: dict[str, Resource] = {}
    stored_derived = []
    for observation in store.read("Observation"):
        key = _business_identifier(observation, system)
        if key is None:
            continue
        if key.rsplit("/", 1)[-1] in derived_codes:
            stored_derived.append(key)
        else:
            sources.setdefault(key, observation)  # the first read, as the analysis frame keeps
    outcomes = study.analysed_outcome_by_code
    resources = []
    for endpoint in study.analysis.derived if study.analysis else []:
        unit = outcomes[endpoint.code].unit
        last = endpoint.sources[-1][0]
        for subject, value in values(study, frame, endpoint).items():
            template = sources[f"{subject}/{endpoint.at}/{last}"]
            key = f"{subject}/{endpoint.at}/{endpoint.code}"
            resource: Resource = {"resourceType": "Observation", "id": resource_id("Observation", system, key)}
            if "meta" in template:
                resource["meta"] = template["meta"]
            resource["identifier"] = [{"system": system, "value": key}]
            resource.update({name: template[name] for name in COPIED if name in template and name != "meta"})
            resource["status"] = "final"
            resource["code"] = {"coding": [{"system": study.study.codesystem, "code": endpoint.code,
                                            "display": endpoint.display}], "text": endpoint.display}
            resource["valueQuantity"] = {"value": float(value), "unit": unit, "system": UCUM, "code": unit}
            resource["derivedFrom"] = [{"reference": f"Observation/{sources[f'{subject}/{visit}/{code}']['id']}"}
                                       for code, visit in endpoint.sources]
            resources.append(resource)
    made = {r["identifier"][0]["value"] for r in resources}
    return resources, sorted(set(stored_derived) - made)


def _business_identifier(observation: Resource, system: str) -> str | None:
    for identifier in observation.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == system and isinstance(identifier.get("value"), str):
            return identifier["value"]
    return None

