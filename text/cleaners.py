"""Cleaners: text -> the spoken-form text that is mapped to symbols.

Each helper does one thing; a pipeline (the names users put in `text_cleaners`) composes them.

English pipelines give NVIDIA's outputs:
- `basic_cleaners`: lowercase, collapse whitespace (any language; no transliteration).
- `transliteration_cleaners`: to ASCII (unidecode), lowercase, collapse whitespace.
- `english_cleaners`: to ASCII, lowercase, numbers spelled out, the 18 abbreviations, collapse
  whitespace.

`russian_cleaners`, for the Russian symbol set (see text/symbols.py):
1. Unicode NFC ("е" + U+0308 becomes "ё"); a combining acute stress (U+0301) becomes '+' before
   its vowel ("молоко́" -> "молок+о"), the ruaccent/RUSLAN-style mark. Existing '+' stay where
   they are.
2. lowercase; "ё" stays "ё" (never folded into "е").
3. punctuation: quotes « » “ ” „ ‟ ‹ › " are removed (not spoken); ‘ ’ ʼ ` ´ become "'";
   every dash and the minus sign (‐ ‑ ‒ – — ― −) become '-'; "…" becomes "...".
4. numbers spelled out with num2words (text/numbers_ru.py: units, years, ordinals, decimals).
5. abbreviations (`_russian_abbreviations`): т.е., т.д., т.п., т.к., т.н., т.о., н.э., др.,
   пр., гг., г. (город; after a number it is "года"/"году", step 4), ул., руб., коп., тыс., млн,
   млрд, стр., напр., проф., акад., тел., №. Left out as too ambiguous at a sentence end: им.
   (the pronoun "им."), см. (смотри or сантиметр), д., кв. An abbreviation that ends the text
   keeps its full stop.
6. Latin letters are transliterated to Cyrillic by a fixed letter map (`_LATIN_TO_CYRILLIC`):
   digraphs first (shch щ, sh ш, ch ч, zh ж, kh х, ts ц, ya я, yu ю, yo ё, ph ф, th т, ck к),
   then one letter each (c, q -> к; j -> дж; w -> в; x -> кс; y -> и); accented Latin letters are
   first reduced to ASCII by unidecode. It is a reading aid for stray words, not a G2P.
7. whitespace collapsed.
Anything else left over (e.g. '#', '/', Greek) is not removed: text_to_sequence reports it.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Dict, List, Tuple

from unidecode import unidecode

from text.numbers import normalize_numbers
from text.numbers_ru import normalize_numbers_ru


class UnknownCleanerError(ValueError):
    """A cleaner name that is not one of `CLEANERS`."""


# runs of whitespace (spaces, tabs, newlines, no-break spaces)
_whitespace_re = re.compile(r"\s+")

# (abbreviation with its full stop, expansion): keithito/NVIDIA's 18, matched case-insensitively
_english_abbreviations: List[Tuple[re.Pattern, str]] = [
    (re.compile(rf"\b{abbreviation}\.", re.IGNORECASE), expansion)
    for abbreviation, expansion in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"),
        ("co", "company"), ("jr", "junior"), ("maj", "major"), ("gen", "general"),
        ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"),
        ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
        ("col", "colonel"), ("ft", "fort"),
    ]
]

# (abbreviation, expansion) for lower-case Russian; compound ones allow a space: "т. е."
_russian_abbreviations: List[Tuple[re.Pattern, str]] = [
    (re.compile(rf"(?<![^\W\d_]){pattern}(?P<end>\s*$)?"), expansion)
    for pattern, expansion in [
        (r"т\.\s?е\.", "то есть"), (r"т\.\s?д\.", "так далее"), (r"т\.\s?п\.", "тому подобное"),
        (r"т\.\s?к\.", "так как"), (r"т\.\s?н\.", "так называемый"),
        (r"т\.\s?о\.", "таким образом"), (r"н\.\s?э\.", "нашей эры"), (r"др\.", "другие"),
        (r"пр\.", "прочее"), (r"гг\.", "годы"), (r"г\.", "город"), (r"ул\.", "улица"),
        (r"руб(?:\.|\b)", "рублей"), (r"коп(?:\.|\b)", "копеек"), (r"тыс\.", "тысяч"),
        (r"млрд\b\.?", "миллиардов"), (r"млн\b\.?", "миллионов"), (r"стр\.", "страница"),
        (r"напр\.", "например"), (r"проф\.", "профессор"), (r"акад\.", "академик"),
        (r"тел\.", "телефон"), (r"№\s?", "номер "),
    ]
]

# a letter followed by a combining acute accent (stress written as "о́")
_acute_stress_re = re.compile("(.)\u0301")
# quotation marks, which are not spoken
_quotes_re = re.compile("[«»“”„‟‹›\"]")
# apostrophe look-alikes
_apostrophes_re = re.compile("[‘’ʼ`´]")
# hyphens, dashes and the minus sign
_dashes_re = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212]")
# accented Latin letters (Latin-1 Supplement and Latin Extended-A/B), reduced by unidecode
_accented_latin_re = re.compile("[\u00c0-\u024f]")
# Latin letters, digraphs first so that "sh" is not read "с", "х"
_LATIN_TO_CYRILLIC: Dict[str, str] = {
    "shch": "щ", "sh": "ш", "ch": "ч", "zh": "ж", "kh": "х", "ts": "ц", "ya": "я", "yu": "ю",
    "yo": "ё", "ph": "ф", "th": "т", "ck": "к",
    "a": "а", "b": "б", "c": "к", "d": "д", "e": "е", "f": "ф", "g": "г", "h": "х", "i": "и",
    "j": "дж", "k": "к", "l": "л", "m": "м", "n": "н", "o": "о", "p": "п", "q": "к", "r": "р",
    "s": "с", "t": "т", "u": "у", "v": "в", "w": "в", "x": "кс", "y": "и", "z": "з",
}
# longest keys first, so the alternation prefers digraphs
_latin_re = re.compile("|".join(sorted(_LATIN_TO_CYRILLIC, key=len, reverse=True)))


# ------------------------------------------------------------------ one-verb helpers

def lowercase(text: str) -> str:
    return text.lower()


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace becomes one space (the ends are kept, as NVIDIA does)."""
    return _whitespace_re.sub(" ", text)


def convert_to_ascii(text: str) -> str:
    return unidecode(text)


def expand_numbers(text: str) -> str:
    return normalize_numbers(text)


def expand_abbreviations(text: str) -> str:
    for regex, expansion in _english_abbreviations:
        text = regex.sub(expansion, text)
    return text


def convert_stress_accents(text: str) -> str:
    """NFC, then a combining acute after a vowel becomes '+' before it: "о́" -> "+о"."""
    text = unicodedata.normalize("NFC", text)
    return _acute_stress_re.sub(r"+\1", text)


def normalize_russian_punctuation(text: str) -> str:
    text = _quotes_re.sub("", text)
    text = _apostrophes_re.sub("'", text)
    text = _dashes_re.sub("-", text)
    return text.replace("…", "...")


def expand_russian_numbers(text: str) -> str:
    return normalize_numbers_ru(text)


def expand_russian_abbreviations(text: str) -> str:
    def expand(m: re.Match, expansion: str) -> str:
        # an abbreviation that ends the text also ends its sentence: keep the full stop
        return expansion + "." if m.group("end") is not None else expansion

    for regex, expansion in _russian_abbreviations:
        text = regex.sub(lambda m, e=expansion: expand(m, e), text)
    return text


def transliterate_latin(text: str) -> str:
    """Lower-case Latin letters to Cyrillic with `_LATIN_TO_CYRILLIC` ("shop" -> "шоп")."""
    text = _accented_latin_re.sub(lambda m: unidecode(m.group(0)).lower(), text)
    return _latin_re.sub(lambda m: _LATIN_TO_CYRILLIC[m.group(0)], text)


# ------------------------------------------------------------------ pipelines

def basic_cleaners(text: str) -> str:
    """Lowercase and collapse whitespace; no transliteration."""
    return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text: str) -> str:
    """Non-English text: to ASCII, lowercase, collapse whitespace."""
    return collapse_whitespace(lowercase(convert_to_ascii(text)))


def english_cleaners(text: str) -> str:
    """English text: to ASCII, lowercase, numbers, abbreviations, whitespace (NVIDIA's order)."""
    text = lowercase(convert_to_ascii(text))
    text = expand_abbreviations(expand_numbers(text))
    # quotes are not spoken and not in the symbol set (NVIDIA drops them when encoding)
    return collapse_whitespace(text.replace('"', ""))


def russian_cleaners(text: str) -> str:
    """Russian text for the Russian symbol set (steps in the module docstring)."""
    text = lowercase(convert_stress_accents(text))
    text = normalize_russian_punctuation(text)
    text = expand_russian_abbreviations(expand_russian_numbers(text))
    text = transliterate_latin(text)
    return collapse_whitespace(text)


CLEANERS: Dict[str, Callable[[str], str]] = {
    "basic_cleaners": basic_cleaners,
    "transliteration_cleaners": transliteration_cleaners,
    "english_cleaners": english_cleaners,
    "russian_cleaners": russian_cleaners,
}


def get_cleaner(name: str) -> Callable[[str], str]:
    """The pipeline called `name`.

    Raises:
        UnknownCleanerError: naming the valid cleaners.
    """
    if name not in CLEANERS:
        raise UnknownCleanerError(
            f"unknown cleaner {name!r}; valid cleaners: {', '.join(CLEANERS)}")
    return CLEANERS[name]
