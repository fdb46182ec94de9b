"""Every string a report shows, in every language: `locale/<lang>.json`, one file per language.

A translator edits the JSON files only: each maps a key to a text with `{field}` placeholders
(Python format syntax). tests/test_messages.py checks that every key exists in every language
with the same placeholders, and that the Russian texts leave no English words untranslated
outside identifiers (metric and hparam names, commands).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

LOCALE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locale")
LANGUAGES = tuple(sorted(os.path.splitext(name)[0] for name in os.listdir(LOCALE_DIR)
                         if name.endswith(".json")))


class UnknownLanguageError(ValueError):
    """A language with no locale file."""


def _load(lang: str) -> Dict[str, str]:
    with open(os.path.join(LOCALE_DIR, f"{lang}.json"), encoding="utf-8") as f:
        return json.load(f)


MESSAGES: Dict[str, Dict[str, str]] = {lang: _load(lang) for lang in LANGUAGES}


def check_language(lang: str) -> str:
    """`lang` when a locale file exists for it, else UnknownLanguageError naming the choices."""
    if lang not in MESSAGES:
        raise UnknownLanguageError(f"unknown language {lang!r}; choose one of "
                                   f"{', '.join(LANGUAGES)}")
    return lang


def one_line(err: BaseException, limit: int = 300, sentence: bool = False) -> str:
    """An error as the one line a user sees after a file's name: the one helper for it.

    Whitespace and line breaks collapse to single spaces; an OSError gives its strerror
    ("No such file or directory"); `sentence` keeps only the first sentence; the text is cut at
    a word boundary past `limit` characters (" ..."); an empty message gives the error's type.
    """
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = " ".join(str(err).split())
    if sentence:
        text = text.split(". ")[0].rstrip(".")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text or type(err).__name__


def message(lang: str, key: str, **fields: Any) -> str:
    """The text of `key` in `lang`, its placeholders filled from `fields`."""
    return MESSAGES[check_language(lang)][key].format(**fields)
