"""``didgw backup FILE`` and ``didgw restore FILE``: the whole gateway in one archive, and back
(the work is in gateway/ops/backup.py and gateway/ops/restore.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli._base import CommandTree, load_config, state_dir, when


def cmd_backup(args: argparse.Namespace) -> int:
    import time

    from gateway import __version__
    from gateway.config import find_config
    from gateway.errors import DidgwError
    from gateway.ops.backup import dated_name, prune, take_backup

    if (args.file is None) == (args.dir is None):
        raise DidgwError("give FILE or --dir DIR (one of them)")
    if args.keep is not None and (args.dir is None or args.keep < 1):
        raise DidgwError("--keep N goes with --dir, and N is at least 1")
    config = load_config(args)
    now = time.time()
    target = Path(args.file) if args.file else Path(args.dir) / dated_name(now)
    result = take_backup(
        state_dir(args, config),
        find_config(args.config, os.environ),
        target,
        force=args.force,
        now=now,
        version=__version__,
    )
    print(f"wrote {result.path} ({result.size} bytes, 0600): gateway {result.gateway_did}")
    print(f"record: {result.entries} entries, verified; root {result.root}")
    print(f"head: {result.head or '-'}")
    print(f"files: {', '.join(result.members)}")
    if args.keep is not None:
        for path in prune(Path(args.dir), args.keep):
            print(f"removed {path} (keeping the {args.keep} newest)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from gateway.ops.restore import restore_backup

    config = load_config(args)
    directory = state_dir(args, config)
    result = restore_backup(
        Path(args.file),
        directory,
        force=args.force,
        config_out=Path(args.write_config) if args.write_config else None,
    )
    if result.moved_aside is not None:
        print(f"the state that was in {directory} is now in {result.moved_aside}")
    print(
        f"restored gateway {result.gateway_did} into {directory}: {result.entries} entries, "
        f"verified; root {result.root}; backed up {when(result.created)}"
    )
    if result.config_written is not None:
        print(f"the backup's configuration: {result.config_written} (0600)")
    return 0


def register(tree: CommandTree) -> None:
    backup = tree.command(
        "backup",
        cmd_backup,
        "write the keys, the database (online, consistent, verified) and the configuration "
        "to one archive (0600)",
        "didgw backup /var/backups/didgw/didgw-$(date +%F).tar",
        on_state=False,  # root may write the archive where the service's user cannot
    )
    backup.add_argument("file", metavar="FILE", nargs="?", help="the archive to write (a new file)")
    backup.add_argument(
        "--dir",
        metavar="DIR",
        help="instead of FILE: write DIR/didgw-<UTC time>.tar (the daily timer's way)",
    )
    backup.add_argument(
        "--keep",
        metavar="N",
        type=int,
        help="with --dir: then remove all but the N newest didgw-<time>.tar in DIR",
    )
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    restore = tree.command(
        "restore",
        cmd_restore,
        "restore a backup into the state directory (stop the gateway first)",
        "didgw restore didgw-2026-12-05.tar --state-dir /var/lib/didgw",
        on_state=False,  # it gives what it restores to the state's owner itself
    )
    restore.add_argument("file", metavar="FILE", help="an archive written by didgw backup")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore over an existing state: it is moved into replaced-<time>/ inside it first",
    )
    restore.add_argument(
        "--write-config",
        metavar="PATH",
        help="also write the backup's configuration file to PATH (a new file, 0600)",
    )
