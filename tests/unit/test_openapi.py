"""The OpenAPI document is valid OpenAPI 3.1 and describes exactly the routes the API has."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from openapi_spec_validator import validate

from gateway.config import load_config
from gateway.db import connect, migrate
from gateway.run.http.api import OPENAPI, JsonApi
from gateway.run.http.device_import import DeviceImport
from gateway.run.http.energy import EnergyDoor
from gateway.run.http.market import MarketDoor
from gateway.run.http.mydata import MyDataDoor

DOCUMENT = json.loads(OPENAPI.read_text())


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


def test_every_api_route_is_in_the_document_and_nothing_else(tmp_path: Path) -> None:
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    edge = SimpleNamespace(
        config=load_config(None),
        db=db,
        gateway=SimpleNamespace(did="did:key:z6MkTest"),
        env={},
        sessions=None,
        base_url="http://localhost:8443",
        market=None,
    )
    try:
        defined = [
            *JsonApi(edge).routes(),  # type: ignore[arg-type]
            *DeviceImport(edge).api_routes(),  # type: ignore[arg-type]
            *(r for r in EnergyDoor(edge).routes() if r.path.startswith("/api/")),  # type: ignore[arg-type]
            *(r for r in MyDataDoor(edge).routes() if r.path.startswith("/api/")),  # type: ignore[arg-type]
            *(r for r in MarketDoor(edge).routes() if r.path.startswith("/api/")),  # type: ignore[arg-type]
        ]
        routes = {(r.method.lower(), r.path) for r in defined}
    finally:
        db.close()
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert routes == documented
    assert all(path.startswith("/api/") for _, path in routes)


def test_every_operation_says_who_may_call_it_and_how_it_fails() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["session"]["in"] == "cookie"
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if path == "/api/openapi.json":
                continue
            assert {"200", "401", "403"} <= set(operation["responses"]) or {
                "201",
                "401",
                "403",
            } <= set(operation["responses"]), (method, path)
            assert "Tokens:" in operation["description"], (method, path)
