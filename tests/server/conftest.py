"""Fixtures for the server tests that mock a FHIR server with `responses`."""

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import responses


@pytest.fixture
def server_holds():
    """Make the mocked server's searches answer with the given resources (or bare ids) per type.

    Only ``_id`` and ``_summary=count`` are honoured; every other search parameter matches everything.
    """

    def register(base: str, held_by_type: dict[str, list]) -> None:
        def answer(request):
            parts = urlsplit(request.url)
            resource_type, query = parts.path.rsplit("/", 1)[-1], parse_qs(parts.query)
            held = [r if isinstance(r, dict) else {"resourceType": resource_type, "id": r}
                    for r in held_by_type.get(resource_type, [])]
            if "_id" in query:
                held = [r for r in held if r["id"] in query["_id"][0].split(",")]
            entries = [] if query.get("_summary") == ["count"] else [{"resource": r} for r in held]
            return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(held), "entry": entries})

        responses.add_callback(responses.GET, re.compile(rf"{re.escape(base)}/[A-Z]\w*(\?.*)?$"), callback=answer)

    return register
