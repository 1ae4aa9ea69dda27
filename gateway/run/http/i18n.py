"""The pages' words in English and Korean: one catalogue, looked up by the English text.

Templates write ``{{ _("Sign in") }}`` or, with values, ``{{ _("Signed in as {did}",
did=person) }}`` (the English text is the key; the values are put in after translation, and
Jinja escapes the result). The translations are TOML files under ``messages/<language>/``,
one per part of the pages (``"English" = "translation"``), merged at start; a text without a
translation shows in English. Handlers say their own words the same way (``_ =
server.words(request)``), and the core's fixed English sentences with values (a passkey
refusal's ``text``, a device file ``Problem``'s) go through the same catalogue.
``tests/unit/test_i18n.py`` checks that every text the templates, handlers and those core
sentences use has a Korean translation, and that no translation is left unused.

The language: the ``lang`` cookie (set by the language switch), else the best of the
browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

MESSAGES = Path(__file__).parent / "messages"
LANGUAGES = ("en", "ko")
LANGUAGE_NAMES = {"en": "English", "ko": "한국어"}
DEFAULT = "en"
LANG_COOKIE = "didgw_lang"

Translate = Callable[..., str]


@cache
def catalogue(language: str) -> dict[str, str]:
    """Every translation into ``language`` (empty for English)."""
    found: dict[str, str] = {}
    folder = MESSAGES / language
    if language == DEFAULT or not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.toml")):
        with path.open("rb") as f:
            for english, text in tomllib.load(f).items():
                found[english] = str(text)
    return found


def translator(language: str) -> Translate:
    """``_(text, **values)``: ``text`` in ``language`` (English when there is no
    translation), with ``values`` put in its ``{name}`` places."""
    table = catalogue(language if language in LANGUAGES else DEFAULT)

    def translate(text: str, **values: Any) -> str:
        chosen = table.get(text, text)
        return chosen.format(**values) if values else chosen

    return translate


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The language of a request: its cookie, else its best ``Accept-Language``."""
    if cookie in LANGUAGES:
        return str(cookie)
    best, best_q = DEFAULT, 0.0
    for part in (accept_language or "").split(",")[:16]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best
