"""One exception root for fhir-msc, and the exit codes the CLI maps them to."""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; scripts can rely on them."""

    OK = 0
    FAILURE = 1  # an unexpected internal error (a bug: please report it)
    USAGE = 2  # bad command line (click's own code)
    REJECTED = 3  # the job finished, but some input rows were rejected
    BAD_INPUT = 4  # input or study definition unusable (map: the usable tables were still mapped)
    INVALID = 5  # produced or given FHIR resources failed validation
    MISMATCH = 6  # a round trip or a verification did not reproduce its source
    PARTIAL = 7  # a push/pull/sync finished, but some resources failed (see the report)
    SERVER = 8  # the server could not be used: unreachable, refused credentials, bad answers
    LOCKED = 9  # another job holds the lock of this store or sync state
    CONFLICTS = 10  # a pull kept local data that differs from the server's (see its conflicts file; --prefer server)
    NO_ACCESS = 11  # a file or directory could not be read or written: permission denied, or a read-only file system
    INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT); what was done and how to resume are printed


class FhirMscError(Exception):
    """Root of every error fhir-msc raises on purpose; its message is for the user."""

    exit_code: ExitCode = ExitCode.FAILURE


class StudyDefinitionError(FhirMscError):
    """The study definition (mapping YAML) is missing or invalid."""

    exit_code = ExitCode.BAD_INPUT


class ViewDefinitionError(FhirMscError):
    """A SQL-on-FHIR ViewDefinition is malformed, or cannot be applied to a resource as written."""

    exit_code = ExitCode.BAD_INPUT


class InputError(FhirMscError):
    """Input tables or FHIR files cannot be read at all."""

    exit_code = ExitCode.BAD_INPUT


class BadUsage(FhirMscError):
    """The command line asks for something that cannot or must not be done as given (exit 2, like click's usage errors)."""

    exit_code = ExitCode.USAGE


class BadServerUrl(BadUsage):
    """A server or token URL that is malformed (no host, port out of range, …) or carries a user name or password."""


class InsecureHttpRefused(BadUsage):
    """Credentials would go over plain http to a host other than loopback, and --insecure-http was not given."""


class ValidationFailed(FhirMscError):
    """FHIR resources did not validate against the fhir.resources models."""

    exit_code = ExitCode.INVALID


class ServerError(FhirMscError):
    """A FHIR server interaction failed; ``response`` and ``outcome`` keep what the server said."""

    exit_code = ExitCode.SERVER

    def __init__(self, message: str, *, status: int | None = None, outcome: dict | None = None, response=None):
        super().__init__(message)
        self.status, self.outcome, self.response = status, outcome, response


class TemporaryServerError(ServerError):
    """408/429/5xx or a network failure that persisted through every retry."""


class AuthorizationError(ServerError):
    """401/403: credentials missing, wrong or not allowed (not retried beyond one re-authentication)."""


class ResourceNotFound(ServerError):
    """404/410."""


class MultipleMatches(ServerError):
    """412: a conditional operation matched more than one resource."""


class OperationOutcomeError(ServerError):
    """Any other 4xx: the server's OperationOutcome is kept in ``outcome``."""


class InvalidResponse(ServerError):
    """The server answered with something that is not the FHIR JSON it should be."""


class IncompleteSearch(ServerError):
    """A search's pages ended before its matches added up to Bundle.total: what it listed is not all there is."""


class ForeignLinkRefused(ServerError):
    """A next link, redirect or other URL pointed to another origin than the server's: not followed."""


class CertificateError(ServerError):
    """The TLS handshake failed (untrusted or mismatched certificate, not TLS at all): never retried."""


class NoAccess(FhirMscError):
    """A file or directory fhir-msc must read or write is not open to it (permissions, a read-only file system)."""

    exit_code = ExitCode.NO_ACCESS

    @classmethod
    def of(cls, error: OSError, writing: object | None = None) -> NoAccess | None:
        """The user's error for an OSError about access, with what to do (None for any other OSError).

        ``writing`` is the directory fhir-msc was writing into, named instead of the file it made there.
        """
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            return None
        problem = "a read-only file system" if error.errno == errno.EROFS else "permission denied"
        if writing is not None:
            return cls(f"{writing}: cannot write there ({problem}): give a directory you may write to, "
                       "or make it writable for you")
        where = error.filename if error.filename is not None else "a file"
        return cls(f"{where}: {problem}: give a path you may read (or write, for an output), "
                   "or change its permissions")


class SyncLocked(FhirMscError):
    """Another job holds the lock of the store or sync state this job writes."""

    exit_code = ExitCode.LOCKED
