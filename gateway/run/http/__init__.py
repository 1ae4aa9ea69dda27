"""People's front door: the HTTP edge of ``didgw run``.

``server.py`` is the server and what every request passes (headers, who is asking, rate
limits, CSRF); each other module adds the routes of one part of the door:

* ``pages.py``: the server-rendered pages' machinery, the home page, signing out;
* ``login.py``: signing in with a wallet (OpenID4VP);
* ``passkeys.py``: binding a passkey after a presentation sign-in, signing in with one;
* ``issuance.py``: issuing credentials to wallets (OpenID4VCI);
* ``device_import.py``: registering devices from a file (a facility manager's page and
  ``POST /api/devices/import``);
* ``energy.py``: a household's energy, now (live) and in the past, its page and its JSON;
* ``market.py``: a household's market (orders signed with her passkey, her trades and
  statements);
* ``console.py``: the facility manager's console (the devices' table, each device's page);
* ``console_admin.py``: the facility manager's people (offers, credentials), record and health
  pages;
* ``mydata.py``: a person's own data (``/my-data``: download, ask for erasure) and the
  receipts of her readings (``/proof``);
* ``demo_links.py``: one-time sign-in links, for ``didgw demo`` only (``[http] demo_links``);
* ``api.py``: the JSON API for integrators under ``/api/`` (``api_desk.py`` its database
  side, ``openapi.json`` its description).

:func:`open_front_door` builds the edge with every part and starts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.config import Config
from gateway.identity import keystore
from gateway.ops.tls import http_server_tls
from gateway.run.http import (
    api,
    console,
    console_admin,
    demo_links,
    device_import,
    energy,
    issuance,
    login,
    market,
    mydata,
    pages,
    passkeys,
)
from gateway.run.http.server import HttpEdge
from gateway.service import Gateway

log = logging.getLogger(__name__)


async def open_front_door(
    config: Config, state_dir: Path, env: Mapping[str, str], gateway: Gateway
) -> HttpEdge:
    """The HTTP edge with all its parts, listening. Raises OSError when the port cannot be
    had, :class:`~gateway.errors.DidgwError` when its certificate cannot be made."""
    passphrase = keystore.read_passphrase(config.keys.passphrase_file, env)
    context = http_server_tls(config, state_dir, passphrase, now=time.time())
    edge = HttpEdge(config, state_dir, env, gateway)
    for part in (
        pages,
        login,
        passkeys,
        issuance,
        device_import,
        api,
        energy,
        market,
        console,
        console_admin,
        mydata,
        demo_links,
    ):
        part.add_routes(edge)
    try:
        await edge.start(context)
    except BaseException:
        await edge.stop()
        raise
    return edge
