"""Shared fixtures: standard vectors, a migrated in-memory database, a registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlite_utils import Database

from gateway.db import connect, migrate
from gateway.identity import offline_resolver
from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer
from gateway.registry import Registry


@pytest.fixture
def db() -> Iterator[Database]:
    database = connect(":memory:")
    migrate(database, now=1_700_000_000.0)
    yield database
    database.close()


@pytest.fixture
def registry(db: Database) -> Registry:
    return Registry(db, offline_resolver())


@pytest.fixture
def new_did() -> Any:
    """Make a fresh did:key (and its signer) for each call."""

    def make() -> Signer:
        return Signer.for_did_key(generate_key())

    return make
