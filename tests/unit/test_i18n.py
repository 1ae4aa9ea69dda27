"""The pages' words: every text a page shows has its Korean translation, none is left over,
and the language is chosen as a reader expects."""

from __future__ import annotations

import ast
import re

import pytest
from support import ROOT

from gateway.credentials.oid4vp import REASONS
from gateway.run.http import i18n
from gateway.run.http.market import REFUSALS as MARKET_REFUSALS

HTTP = ROOT / "gateway" / "run" / "http"
#: ``_("text")`` or ``_("text", name=…)`` in a template, with either quote.
CALL = re.compile(r"""_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")


def texts_used() -> set[str]:
    """Every text the pages show through the catalogue."""
    found: set[str] = set()
    for template in (HTTP / "templates").glob("*.html"):
        for double, single in CALL.findall(template.read_text()):
            found.add(double or single)
    for module in HTTP.glob("*.py"):  # page titles: render(request, …, title="…")
        for node in ast.walk(ast.parse(module.read_text())):
            titled = isinstance(node, ast.keyword) and node.arg == "title"
            if titled and isinstance(node.value, ast.Constant):  # type: ignore[union-attr]
                found.add(str(node.value.value))  # type: ignore[union-attr]
    found.update(REASONS.values())  # a refused sign-in shows why (login_done.html)
    found.update(MARKET_REFUSALS.values())  # a refused order says why (market.js)
    return found


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
