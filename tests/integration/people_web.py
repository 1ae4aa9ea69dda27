"""People at the HTTP front door, for the tests: a signed-in session to start from.

:class:`PresentationSession` stands in for the OpenID4VP sign-in at ``/login`` until it is
here; the integrator swaps it for the real thing. Only the HTTP exchange is skipped.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from gateway_process import GatewayProcess, gateway_did
from support import Run

from gateway.auth import person_requests
from gateway.auth.web_sessions import WebSessions
from gateway.chain.store import ChainStore
from gateway.config import load_config
from gateway.credentials.permissions import permissions_from
from gateway.credentials.sd_jwt import present, verify_presentation
from gateway.db import connect, write_transaction
from gateway.identity import Signer, offline_resolver
from gateway.identity.keystore import generate_key
from gateway.service import build_issuer, build_status_lists

COOKIE = "didgw_session"


@dataclass
class PresentationSession:
    did: str  # the person's did:key
    credential_id: str  # the household credential behind the session (urn:uuid:…)
    token: str  # the session cookie's value
    csrf: str
    url: str  # the front door's base URL

    @classmethod
    def sign_in(cls, didgw: Run, front_door: GatewayProcess) -> PresentationSession:
        state = front_door.state
        gateway = gateway_did(didgw, state)
        holder = Signer.for_did_key(generate_key())
        household = Signer.for_did_key(generate_key()).did
        path = Path(state).parent / "alice.sdjwt"
        issued = didgw(
            "cred", "issue", "household", "--subject", holder.did, "--format", "sd-jwt",
            "--claim", f"household={household}", "--claim", "role=buyer",
            "--claim", "name=Alice", "-o", str(path), "--state-dir", str(state),
        )  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        match = re.search(r"issued (urn:uuid:\S+)", issued.stdout + issued.stderr)
        assert match is not None, issued.stdout
        nonce, aud, now = secrets.token_urlsafe(16), front_door.url, time.time()
        shown = present(
            path.read_text().strip(), ["household", "role"], holder,
            nonce=nonce, aud=aud, iat=int(now),
        )  # fmt: skip
        db = connect(state / "didgw.db")
        config = load_config(front_door.config)
        resolver = offline_resolver()
        status = build_status_lists(config, resolver, build_issuer(config, db, gateway))
        verified = verify_presentation(
            shown, resolver=resolver, now=now, nonce=nonce, aud=aud,
            status=status, trusted_issuers={gateway},
        )  # fmt: skip
        permissions = permissions_from([verified], holder=holder.did, trusted_issuers={gateway})
        index = verified.claims["status"]["status_list"]["idx"]
        expires_ms = int(verified.claims["exp"]) * 1000
        now_ms = int(now * 1000)
        try:
            chain = ChainStore(db)
            with write_transaction(db.conn):
                [disclosed] = chain.append_within(
                    [person_requests.disclosure_entry(
                        holder.did, [verified.digest], {verified.vct: verified.disclosed}
                    )],
                    now_ms=now_ms,
                )  # fmt: skip
                chain.append_within(
                    [person_requests.session_entry(
                        holder.did, [verified.digest], disclosed.seq, expires_ms
                    )],
                    now_ms=now_ms,
                )  # fmt: skip
            sessions = WebSessions(
                db, idle_ms=30 * 60_000, max_ms=12 * 3_600_000, random_bytes=secrets.token_bytes
            )
            token, session = sessions.open(
                holder.did, "presentation", permissions, now_ms=now_ms, expires_ms=expires_ms,
                status_indexes=[index], presentations=[verified.digest],
                disclosure=disclosed.seq,
            )  # fmt: skip
        finally:
            db.close()
        return cls(holder.did, match[1], token, session.csrf, front_door.url)

    def cookie(self) -> dict[str, object]:
        """The session cookie as Playwright's ``context.add_cookies`` takes it."""
        return {
            "name": COOKIE,
            "value": self.token,
            "url": self.url,
            "httpOnly": True,
            "secure": True,
            "sameSite": "Strict",
        }
