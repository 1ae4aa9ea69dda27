"""The pages' words: every text a page shows has its Korean translation, none is left over,
and the language is chosen as a reader expects."""

from __future__ import annotations

import ast
import re

import pytest
from support import ROOT

from gateway.auth.refusals import EARNED
from gateway.credentials.oid4vp import REASONS
from gateway.run.http import i18n
from gateway.run.http.console import REFUSAL_WORDS
from gateway.run.http.market import REFUSALS as MARKET_REFUSALS

HTTP = ROOT / "gateway" / "run" / "http"
#: ``_("text")`` or ``_("text", name=…)`` in a template, with either quote.
CALL = re.compile(r"""_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")


def texts_given_to(name: str, position: int, under: str = "gateway") -> set[str]:
    """The text argument (at ``position``) of every ``name(…)`` call under ``under``: the
    refusals and problems the core builds, which the pages show through the catalogue.
    Each must be a constant (what varies goes in the values), or no catalogue finds it."""
    found: set[str] = set()
    top = ROOT / under
    for module in top.rglob("*.py") if top.is_dir() else [top]:
        for node in ast.walk(ast.parse(module.read_text())):
            if not isinstance(node, ast.Call) or getattr(node.func, "id", None) != name:
                continue
            assert len(node.args) > position, f"{module}:{node.lineno}: give the text by position"
            text = node.args[position]
            where = f"{module.relative_to(ROOT)}:{node.lineno}"
            assert isinstance(text, ast.Constant), f"{where}: {name}'s text must be a constant"
            assert isinstance(text.value, str), where
            found.add(text.value)
    return found


def _says(node: ast.AST) -> bool:
    """``_("text", …)`` or ``words(request)("text", …)`` in a handler."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    named = isinstance(func, ast.Name) and func.id == "_"
    made = isinstance(func, ast.Call) and getattr(func.func, "id", None) == "words"
    first = node.args[0]
    return (named or made) and isinstance(first, ast.Constant) and isinstance(first.value, str)


def core_texts() -> set[str]:
    """What the core says to a person by a fixed text with values: a passkey ceremony's
    refusals, a device file's problems; and what each refusal a device earns means."""
    return (
        texts_given_to("PasskeyRefused", 1)
        | texts_given_to("Problem", 2, "gateway/registry/bulk.py")
        | set(REFUSAL_WORDS.values())
    )


def texts_used() -> set[str]:
    """Every text the pages show through the catalogue."""
    found: set[str] = set()
    for template in (HTTP / "templates").glob("*.html"):
        for double, single in CALL.findall(template.read_text()):
            found.add(double or single)
    for module in HTTP.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if _says(node):  # a handler's own words: _("…") or words(request)("…")
                found.add(node.args[0].value)  # type: ignore[attr-defined]
            # page titles: render(request, …, title="…")
            titled = isinstance(node, ast.keyword) and node.arg == "title"
            if titled and isinstance(node.value, ast.Constant):  # type: ignore[union-attr]
                found.add(str(node.value.value))  # type: ignore[union-attr]
    found.update(REASONS.values())  # a refused sign-in shows why (login_done.html)
    found.update(MARKET_REFUSALS.values())  # a refused order says why (market.js)
    return found | core_texts()


def test_the_core_texts_are_found_where_the_core_builds_them() -> None:
    passkeys, problems = (
        texts_given_to("PasskeyRefused", 1),
        texts_given_to("Problem", 2, "gateway/registry/bulk.py"),
    )
    assert "this passkey is already bound" in passkeys  # gateway/auth/passkey_store.py
    assert "the passkey was not accepted: {detail}" in passkeys
    assert "{did} is also on line {earlier}" in problems  # gateway/registry/bulk.py
    assert len(passkeys) >= 15 and len(problems) >= 20


def test_every_refusal_a_device_earns_has_plain_words() -> None:
    assert set(REFUSAL_WORDS) == set(EARNED)


def test_every_text_a_page_shows_is_translated_into_korean() -> None:
    missing = sorted(texts_used() - set(i18n.catalogue("ko")))
    assert not missing, f"add to gateway/run/http/messages/ko/*.toml: {missing}"


def test_no_translation_is_left_unused() -> None:
    unused = sorted(set(i18n.catalogue("ko")) - texts_used())
    assert not unused, f"no page shows these any more: {unused}"


def test_a_text_with_values_keeps_them_in_every_language() -> None:
    for language in i18n.LANGUAGES:
        shown = i18n.translator(language)("added {when}", when="2026-12-05")
        assert "2026-12-05" in shown
    assert i18n.translator("ko")("Sign in") == "로그인"
    assert i18n.translator("en")("Sign in") == "Sign in"
    assert i18n.translator("xx")("Sign in") == "Sign in"  # an unknown language: English
    assert i18n.translator("ko")("a text nobody translated") == "a text nobody translated"


def test_each_translation_keeps_the_places_of_its_values() -> None:
    places = re.compile(r"\{(\w+)\}")
    for english, korean in i18n.catalogue("ko").items():
        assert set(places.findall(english)) == set(places.findall(korean)), english


@pytest.mark.parametrize(
    ("cookie", "header", "chosen"),
    [
        (None, None, "en"),
        (None, "ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", "ko"),
        (None, "en-GB,en;q=0.9,ko;q=0.8", "en"),
        (None, "de-DE,de;q=0.9", "en"),
        (None, "ko;q=0.3, en;q=0.5", "en"),
        (None, "ko;q=bad", "en"),
        ("ko", "en", "ko"),  # the reader's own choice wins
        ("xx", "ko", "ko"),  # a cookie naming no language we have is ignored
    ],
)
def test_the_language_is_the_readers_choice_else_her_browsers(
    cookie: str | None, header: str | None, chosen: str
) -> None:
    assert i18n.choose(cookie, header) == chosen


@pytest.mark.parametrize(
    ("asked", "sent_to"),
    [
        ("/login", "/login"),
        ("/passkeys?x=1", "/passkeys?x=1"),
        ("//evil.example/", "/"),  # another site, scheme-relative
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),  # some browsers read a backslash as a slash
        ("", "/"),
        (None, "/"),
        ("/" + "a" * 600, "/"),
    ],
)
def test_the_language_switch_sends_the_reader_back_to_this_site_only(
    asked: object, sent_to: str
) -> None:
    from gateway.run.http.pages import local_path

    assert local_path(asked) == sent_to
