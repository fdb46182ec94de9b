"""The report strings (locale/*.json): every key in every language, no English left in Russian."""
from __future__ import annotations

import re
import string

import pytest

import messages

# Latin words a Russian text may keep: commands and proper names, not untranslated prose.
ALLOWED_LATIN = {"python", "NVIDIA", "NaN", "inf", "r", "x", "runs_on", "MCD", "WER", "TensorBoard"}  # metric and product names


def _fields(text: str):
    return sorted(f for _, f, _, _ in string.Formatter().parse(text) if f)


def test_every_key_exists_in_every_language_with_the_same_fields():
    languages = messages.LANGUAGES
    assert set(languages) >= {"en", "ru"}
    keys = set(messages.MESSAGES["en"])
    for lang in languages:
        assert set(messages.MESSAGES[lang]) == keys, lang
        for key in keys:
            assert _fields(messages.MESSAGES[lang][key]) == _fields(messages.MESSAGES["en"][key]), \
                (lang, key)


def _untranslated(text: str):
    text = re.sub(r"\{[^}]*\}", " ", text)
    words = []
    for token in text.split():
        token = token.strip(".,;:()\"'!?")
        # identifiers stay as they are: metric and hparam names, flags, files, settings
        if re.search(r"[_./=\-\d]", token):
            continue
        if re.search(r"[A-Za-z]", token) and token not in ALLOWED_LATIN:
            words.append(token)
    return words


def test_russian_has_no_untranslated_english_words():
    found = {key: _untranslated(text) for key, text in messages.MESSAGES["ru"].items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_finds_english():
    assert _untranslated("Диагностика alignment, шаг {step}") == ["alignment"]
    assert _untranslated("--hparams=\"guide_loss_weight=5.0\" python train.py") == []


def test_unknown_language_is_one_clear_error():
    with pytest.raises(messages.UnknownLanguageError, match="choose one of en, ru"):
        messages.message("de", "title", step=1)
