"""Admin commands on the service's gateway run as the service's user.

The installed gateway keeps its state in ``/var/lib/didgw``, owned by the ``didgw`` user
(mode 0700). An administrator who types ``didgw device list`` means that gateway, not a new
one in his home directory: the state directory's default finds it (``config.py``:
:func:`~gateway.config.default_state_dir`). But a command that writes there as root would
leave files the service cannot open (the database's ``-wal`` and ``-shm`` first of all), and
a command run as anyone else cannot read it at all. So, before a command touches a state
directory that belongs to another user:

* as root, the same command starts again as that user (``setpriv``, with that user's
  groups), so that whatever it writes is the service's, and nothing of it runs as root
  after that decision (a process that only changed its ids would still hold root's view of
  its interpreter: a Python whose library root alone can read would fail on its next
  import);
* as anyone else, it stops and prints the exact command to run (``sudo -u didgw …``).

Commands that must stay root to do their work (the broker's set-up and TLS files, which they
give to the broker's user) are declared so and skip this.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import StateError


def run_as_owner(state: Path, argv: Sequence[str] | None = None) -> None:
    """Start the command again as the owner of ``state`` when that is another user and we
    are root (this does not return), or refuse with the command to run (anyone else). Does
    nothing when there is no such directory or it is ours."""
    try:
        owner = state.stat().st_uid
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"cannot look at the state directory {state}: {exc.strerror}") from None
    if owner == os.geteuid():
        return
    try:
        user = pwd.getpwuid(owner)
    except KeyError:
        raise StateError(
            f"the state directory {state} belongs to user id {owner}, who has no account here"
        ) from None
    command = _command_line(argv)
    if os.geteuid() != 0:
        raise StateError(
            f"the gateway's state {state} belongs to {user.pw_name}; run the command as "
            f"{user.pw_name}: {shlex.join(['sudo', '-u', user.pw_name, *command])}"
        )
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise StateError(
            f"the gateway's state {state} belongs to {user.pw_name}, and setpriv (util-linux) "
            f"is missing: run {shlex.join(['sudo', '-u', user.pw_name, *command])}"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(  # noqa: S606 - the same command, as the state's owner
        setpriv,
        [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "--", sys.executable, *command],
    )  # fmt: skip


def _command_line(argv: Sequence[str] | None) -> list[str]:
    """The command as it was started: its script (an absolute path) and its arguments."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = (
            os.path.abspath(args[0]) if os.sep in args[0] else shutil.which(args[0]) or args[0]
        )
    return args
