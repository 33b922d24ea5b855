"""Every error mycelium raises on purpose.

Two families: `DataError` (the input is wrong: bad signature, malformed YAML, stale
version) and `TransportError` (we could not talk to something). The CLI prints
`str(error)` as one line and exits non-zero, so messages say what failed and, where
there is one, the fix.
"""

from __future__ import annotations


class MyceliumError(Exception):
    """Base of all deliberate errors."""


class DataError(MyceliumError):
    """The input itself is wrong; retrying will not help."""


class TransportError(MyceliumError):
    """A peer, file or URL could not be reached or answered badly."""


class ConfigError(DataError):
    """Bad operator input: arguments, missing network directory, existing files."""


class SchemaError(DataError):
    """network.yaml does not match schema v1; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n"
                         + "\n".join(problems))


class YamlError(DataError):
    """YAML that is malformed, too big, too deep, or uses forbidden features."""


class TrustError(DataError):
    """A signed document failed a trust rule (signature, threshold, version, expiry...)."""


class MalformedError(TrustError):
    """Bytes that do not even parse as the signed document they claim to be (HTTP 400)."""


class SignatureError(TrustError):
    """Signatures missing, forged, or below the threshold."""


class RollbackError(TrustError):
    """Version is not higher than the one already held (replay or rollback)."""


class ExpiredError(TrustError):
    """The document's expiry time has passed."""


class WrongNetworkError(TrustError):
    """The document belongs to another network."""


class TooLargeError(DataError):
    """Input over its size cap; refused before parsing."""


class TokenError(TrustError):
    """Join token invalid, expired, or for another network/role."""


class CertificateError(TrustError):
    """A certificate or CSR that does not chain to this network or is malformed."""


class PeerError(TransportError):
    """A peer could not be reached or broke protocol."""


class BusyError(PeerError):
    """A peer is at its limit (HTTP 503): try another one, or again soon."""


class StorageError(TransportError):
    """This machine's disk refused a write (full, over quota, read-only, failing): nothing
    was half-written, and the same write works once the cause is fixed. The API answers
    it 507."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class VmError(DataError):
    """A VM cannot start from what it was given (image hash, missing kernel, bad image):
    retrying does not help until network.yaml or the node's files change."""
