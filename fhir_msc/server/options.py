"""What the server jobs can be asked for: how a push addresses resources, which version a pull keeps.

Kept apart from the HTTP client and the sync machinery, so that listing the choices (the
CLI's --help) loads neither.
"""

from __future__ import annotations

METHODS = ("auto", "id", "conditional")  # id: PUT Type/id; conditional: PUT Type?identifier=…; auto: id if allowed
PREFER = ("local", "server")  # which version a pull keeps when the store's differs from the server's
HOSPITAL_PREFER = ("study", "hospital")  # which value a hospital pull keeps when the store holds another
