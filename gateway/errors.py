"""Errors a person can act on.

Every refusal in didgw is a :class:`DidgwError` whose message says what was
refused and why, in words meant for the operator. The CLI prints the message and
exits non-zero; nothing else is printed (no traceback) because the message is
the whole story. ``code`` is a stable key for scripts and metrics.
"""

from __future__ import annotations


class DidgwError(Exception):
    """Base class: a clear, user-facing refusal."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(DidgwError):
    """The configuration file is missing, unreadable or invalid."""

    code = "invalid_config"


class StateError(DidgwError):
    """The state directory or database is missing, foreign or from a newer version."""

    code = "invalid_state"


class KeyStoreError(DidgwError):
    """A key file is missing, unreadable, too widely readable or wrongly encrypted."""

    code = "invalid_key"


class DidError(DidgwError):
    """A DID or DID URL is malformed or uses an unsupported encoding."""

    code = "invalid_did"


class ResolutionError(DidgwError):
    """A DID could not be resolved (unsupported method, unreachable, not found, stale)."""

    code = "cannot_resolve"


class SignatureError(DidgwError):
    """A signature or signed envelope failed verification."""

    code = "invalid_signature"


class RegistryError(DidgwError):
    """A device registry operation was refused (duplicate, unknown, revoked, …)."""

    code = "registry_refused"


class CredentialError(DidgwError):
    """A credential or presentation is malformed, unverifiable, expired or revoked."""

    code = "credential_refused"
