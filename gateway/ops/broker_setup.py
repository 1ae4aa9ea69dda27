"""Set a broker up for the gateway: its two accounts, their passwords, and the access policy.

One procedure for every broker didgw uses: ``didgw broker setup`` on an installed gateway
(an operator, or the package's set-up) and the private broker of the demo, the tests and
the benches (``ops/broker.py``). It is safe to run again, and each step keeps what an
earlier run made:

1. **The passwords.** The broker's administrator (``admin``: may only administer the
   dynamic-security plugin) and the gateway's account each get a random password in a file
   readable by its owner alone (0600), made if missing and read if present; they never pass
   through a command line or an environment.
2. **The plugin's file.** If mosquitto's dynamic-security file does not exist yet, it is
   made with the administrator's account (``mosquitto_ctrl dynsec init``, the password on
   its standard input) and given to the broker's user, who rewrites it after every change.
   mosquitto reads it at start: a broker already running must be restarted once.
3. **The policy**, over the administrator's connection: the anonymous clients' role and
   group (the authentication topics only) and the default access, the gateway's role, and
   the gateway's account with the password of its file (set again if the account exists,
   so that the file is always the truth).
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.auth import broker as policy
from gateway.errors import DidgwError
from gateway.files import read_secret, write_private
from gateway.transports.dynsec import DynsecAdmin

#: The dynamic-security account that administers the plugin (and nothing else).
ADMIN_USERNAME = "admin"
PASSWORD_BYTES = 24  # 192 bits, URL-safe text: no space, which mosquitto's option files end at


class SetupError(DidgwError):
    code = "broker_setup_failed"


@dataclass(frozen=True)
class Password:
    """A password read from or written to its file (``made``: by this run)."""

    path: Path
    value: str
    made: bool

    def __repr__(self) -> str:  # never the value
        return f"Password({self.path}, made={self.made})"


def password_file(path: Path, *, owner: str = "") -> Password:
    """The password in ``path``, or a new random one written there (0600, and given to
    ``owner`` when run as root): the file must be its owner's alone."""
    if path.exists() or path.is_symlink():
        text = read_secret(path, "broker password file", SetupError).decode("utf-8", "replace")
        value = text.strip()
        if not value or any(c.isspace() for c in value):
            raise SetupError(f"broker password file {path} is empty or holds a space")
        return Password(path, value, made=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(PASSWORD_BYTES)
    write_private(path, (value + "\n").encode("ascii"), error=SetupError)
    if owner and os.geteuid() == 0:
        _give(path, owner)
    return Password(path, value, made=True)


def init_dynsec_file(path: Path, admin_password: str, *, owner: str = "") -> bool:
    """Make mosquitto's dynamic-security file with the administrator's account, unless it
    exists (False). ``owner`` (the broker's user) gets it when run as root."""
    if path.exists():
        return False
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        raise SetupError("mosquitto_ctrl is not installed (Debian: apt install mosquitto-clients)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(  # noqa: S603 - a fixed program; the password goes to its prompt
            [ctrl, "dynsec", "init", str(path), ADMIN_USERNAME],
            input=f"{admin_password}\n{admin_password}\n".encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
    except subprocess.CalledProcessError as exc:
        said = exc.stderr.decode(errors="replace").strip() or exc.stdout.decode(errors="replace")
        raise SetupError(f"mosquitto_ctrl dynsec init {path} failed: {said.strip()}") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"mosquitto_ctrl dynsec init {path} did not finish in 30 s") from None
    os.chmod(path, 0o600)
    if owner and os.geteuid() == 0:
        _give(path, owner)
    return True


def apply_policy(admin: DynsecAdmin, prefix: str, username: str, password: str) -> list[str]:
    """The anonymous clients' policy, the gateway's role and its account with ``password``,
    over a connection of the administrator (or of the gateway itself); what was done."""
    group = admin.execute([{"command": "getAnonymousGroup"}])[0]
    current = str((group.get("data") or {}).get("group", {}).get("groupname", ""))
    admin.execute(
        [
            *policy.anonymous_policy_commands(prefix, anonymous_group=current),
            *policy.gateway_role_commands(prefix),
        ],
        ok_errors=policy.POLICY_OK_ERRORS,
    )
    done = [f"anonymous clients: only {policy.auth_request_topic(prefix)} and the answers"]
    if username in admin.list_clients():
        admin.set_client_password(username, password)
        roles = {r.get("rolename") for r in admin.get_client(username).get("roles", [])}
        if policy.GATEWAY_ROLE not in roles:  # mosquitto 2.0.11 answers a second add with
            admin.execute(  # "Internal error": add it only when missing
                [
                    {
                        "command": "addClientRole",
                        "username": username,
                        "rolename": policy.GATEWAY_ROLE,
                    }
                ]
            )
        done.append(f"the gateway's account {username}: password set from its file")
    else:
        admin.execute(policy.gateway_client_commands(username, password))
        done.append(f"the gateway's account {username}: created")
    return done


def token_directory(path: Path, *, owner: str = "", group: str = "") -> None:
    """Where the gateway writes what the broker's didgw plugin reads: the gateway's to
    write, the broker's group's to read (set-group-id: new files get that group)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and owner and group:
        try:
            os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        except KeyError as exc:
            raise SetupError(f"no such user or group for {path}: {exc}") from None
        os.chmod(path, 0o2750)  # noqa: S103 - the broker's group reads; nobody else


def _give(path: Path, owner: str) -> None:
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise SetupError(f"no user {owner!r} to own {path}") from None
    os.chown(path, user.pw_uid, user.pw_gid)
