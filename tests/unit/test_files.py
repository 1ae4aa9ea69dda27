"""Files holding secrets or personal data (gateway/files.py): secrets refused when others may
read them, new files 0600 and never through a symbolic link, old files narrowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import DidgwError, KeyStoreError
from gateway.files import (
    check_secret_file,
    make_private,
    private_file,
    read_secret,
    secret_file_problem,
    write_private,
)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_secret_readable_only_by_its_owner_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    for owner_only in (0o600, 0o400, 0o700):
        secret.chmod(owner_only)
        assert read_secret(secret) == b"s3cret\n"
        assert secret_file_problem(secret) is None


@pytest.mark.parametrize("shared", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601])
def test_a_secret_group_or_others_may_access_is_refused_naming_mode_and_fix(
    tmp_path: Path, shared: int
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    secret.chmod(shared)
    expected = f"{secret} is accessible by group or others (mode {shared:04o}); run: chmod 600"
    with pytest.raises(KeyStoreError) as refused:
        read_secret(secret, "token file", KeyStoreError)
    assert str(refused.value) == f"token file {expected} {secret}"
    with pytest.raises(DidgwError, match="run: chmod 600"):
        check_secret_file(secret)
    assert secret_file_problem(secret) == expected + f" {secret}"


def test_a_link_to_a_secret_is_judged_by_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"s3cret")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_secret(link) == b"s3cret"
    target.chmod(0o644)
    with pytest.raises(DidgwError, match="mode 0644"):
        read_secret(link)


def test_missing_directory_and_oversized_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DidgwError, match="does not exist"):
        read_secret(tmp_path / "missing")
    assert secret_file_problem(tmp_path / "missing") == "file not found"
    with pytest.raises(DidgwError, match="does not exist"):
        check_secret_file(tmp_path / "missing")
    with pytest.raises(DidgwError, match="not a regular file"):
        read_secret(tmp_path)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    big.chmod(0o600)
    with pytest.raises(DidgwError, match="larger than 100 bytes"):
        read_secret(big, max_bytes=100)


def test_a_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0)
    path = tmp_path / "out"
    write_private(path, b"data")
    assert mode(path) == 0o600 and path.read_bytes() == b"data"


def test_an_existing_file_or_link_is_never_written_without_replace(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    existing, link, dangling = tmp_path / "existing", tmp_path / "link", tmp_path / "dangling"
    existing.write_bytes(b"kept")
    link.symlink_to(victim)
    dangling.symlink_to(tmp_path / "would-be-created")
    for path in (existing, link, dangling):
        with pytest.raises(KeyStoreError, match="already exists; not overwriting it"):
            write_private(path, b"new", error=KeyStoreError)
    with pytest.raises(DidgwError, match=r"^custom message$"):
        write_private(existing, b"new", exists="custom message")
    assert existing.read_bytes() == b"kept" and victim.read_bytes() == b"theirs"
    assert not (tmp_path / "would-be-created").exists()


def test_replace_renames_over_the_name_and_never_writes_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    victim.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(victim)
    write_private(link, b"ours", replace=True)
    assert victim.read_bytes() == b"theirs" and mode(victim) == 0o644
    assert not link.is_symlink() and link.read_bytes() == b"ours" and mode(link) == 0o600
    existing = tmp_path / "existing"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    write_private(existing, b"new", replace=True)
    assert existing.read_bytes() == b"new" and mode(existing) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "link", "victim"]


def test_a_failed_write_leaves_no_file_or_the_old_one(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    old.write_bytes(b"old")
    for path, replace in ((new, False), (old, True)):
        with pytest.raises(RuntimeError), private_file(path, replace=replace) as out:
            out.write(b"half")
            raise RuntimeError("the export failed half-way")
    assert not new.exists() and old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    with pytest.raises(DidgwError, match="cannot create"):
        write_private(tmp_path / "no-such-dir" / "f", b"x")


def test_make_private_narrows_only_what_is_wider_and_says_which(tmp_path: Path) -> None:
    wide, narrow, link = tmp_path / "wide", tmp_path / "narrow", tmp_path / "link"
    wide.write_bytes(b"")
    wide.chmod(0o664)
    narrow.write_bytes(b"")
    narrow.chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    outside.chmod(0o644)
    link.symlink_to(outside)
    changed = make_private([wide, narrow, link, tmp_path / "gone"])
    assert changed == [wide]
    assert mode(wide) == 0o600 and mode(narrow) == 0o600
    assert mode(outside) == 0o644  # a link is not followed
