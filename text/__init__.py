"""Text front end: cleaners, symbol sets, and text <-> id sequences (keithito/NVIDIA layout).

`text_to_sequence` differs from NVIDIA's in one way on purpose: a character outside the symbol
set raises `UnknownCharacterError` instead of vanishing, because a wrong cleaner or symbol set
silently turns whole transcripts into nothing (Cyrillic through basic_cleaners and the English
set drops every word). `drop_unknown=True` restores NVIDIA's silent dropping of single
characters. The ids themselves are NVIDIA's for the English set, with no end-of-sequence symbol.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple

from text.cleaners import UnknownCleanerError, get_cleaner
from text.symbols import PAD, get_symbols

__all__ = [
    "ArpabetError", "UnknownCharacterError", "UnknownCleanerError", "clean_text",
    "sequence_to_text", "text_to_sequence", "unknown_characters",
]


class UnknownCharacterError(ValueError):
    """Characters (after cleaning) outside the symbol set.

    Attributes:
        characters: the unknown characters, in order of first appearance.
        text: the text as given, before cleaning.
    """

    def __init__(self, message: str, characters: List[str], text: str):
        super().__init__(message)
        self.characters = characters
        self.text = text


class ArpabetError(ValueError):
    """ARPAbet in curly braces that cannot be used: a non-English symbol set or a bad phoneme."""


# the text before the first "{...}", the phonemes inside it, and the rest
_curly_re = re.compile(r"(.*?)\{(.+?)\}(.*)", re.DOTALL)
# Cyrillic letters, to tell a user that the text looks Russian
_cyrillic_re = re.compile("[\u0400-\u04ff]")
# ASCII Latin letters, to tell a user that Russian text holds English
_latin_re = re.compile("[A-Za-z]")

# symbol set -> (symbol -> id, id -> symbol); built on first use
_tables: Dict[str, Tuple[Dict[str, int], Dict[int, str]]] = {}


def _table(symbol_set: str) -> Tuple[Dict[str, int], Dict[int, str]]:
    if symbol_set not in _tables:
        symbols = get_symbols(symbol_set)
        _tables[symbol_set] = ({s: i for i, s in enumerate(symbols)}, dict(enumerate(symbols)))
    return _tables[symbol_set]


def clean_text(text: str, cleaner_names: Sequence[str] | str) -> str:
    """Run the named cleaners over `text`, in order.

    Args:
        text: raw transcript.
        cleaner_names: names from `text.cleaners.CLEANERS`; one name as a string is accepted.

    Raises:
        UnknownCleanerError: for a name that is not a cleaner, listing the valid ones.
    """
    if isinstance(cleaner_names, str):
        cleaner_names = [cleaner_names]
    for name in cleaner_names:
        text = get_cleaner(name)(text)
    return text


def _encode(text: str, cleaner_names: Sequence[str] | str,
            symbol_set: str) -> Tuple[List[int], List[str], List[str]]:
    """(ids of the known symbols, unknown characters or "{PHONEME}"s in order of appearance,
    cleaned words that hold a letter or digit but not one known symbol)."""
    symbol_to_id, _ = _table(symbol_set)
    ids: List[int] = []
    unknown: List[str] = []
    lost_words: List[str] = []

    def add_text(cleaned: str) -> None:
        lost_words.extend(
            word for word in cleaned.split()
            if any(c.isalnum() for c in word)
            and not any(c in symbol_to_id and c != PAD for c in word))
        add(cleaned, lambda s: s)

    def add(symbols: Iterable[str], shown_as) -> None:
        for s in symbols:
            if s in symbol_to_id and s != PAD:  # the pad is reserved for padding
                ids.append(symbol_to_id[s])
            elif shown_as(s) not in unknown:
                unknown.append(shown_as(s))

    while text:
        # ARPAbet braces exist in the English set only; elsewhere braces are plain characters
        m = _curly_re.match(text) if symbol_set == "english" else None
        if m is None:
            add_text(clean_text(text, cleaner_names))
            break
        add_text(clean_text(m.group(1), cleaner_names))
        # "{hh ah0}" is read as "{HH AH0}"; NVIDIA would drop lower-case phonemes
        add(["@" + p.upper() for p in m.group(2).split()], lambda s: "{" + s[1:] + "}")
        text = m.group(3)
    return ids, unknown, lost_words


def unknown_characters(text: str, cleaner_names: Sequence[str] | str,
                       symbol_set: str = "english") -> List[str]:
    """What `text_to_sequence` would reject: characters left after cleaning that are not in the
    set (the pad '_' included), and unknown ARPAbet phonemes written as "{PHONEME}".

    Returns:
        The unknown items in order of first appearance; empty when the text is fine.
    """
    return _encode(text, cleaner_names, symbol_set)[1]


def _hint(unknown: List[str], cleaner_names: Sequence[str] | str, symbol_set: str) -> str:
    chars = "".join(unknown)
    if symbol_set == "english" and _cyrillic_re.search(chars):
        return ("the text looks Russian: use text_cleaners=['russian_cleaners'] with "
                "symbol_set='russian' (or english_cleaners/transliteration_cleaners to "
                "transliterate it to Latin)")
    if symbol_set == "russian" and _latin_re.search(chars):
        return "use text_cleaners=['russian_cleaners'], which transliterates Latin letters"
    if any(c.isdigit() for c in chars):
        return "use english_cleaners or russian_cleaners, which spell numbers out"
    if symbol_set == "russian" and any(c.isupper() for c in chars):
        return "use text_cleaners=['russian_cleaners'], which lower-cases"
    if PAD in unknown:
        return f"{PAD!r} is the padding symbol and cannot appear in text"
    if any(u.startswith("{") and len(u) > 1 for u in unknown):
        return "write CMUdict ARPAbet phonemes such as {HH AH0 L OW1}"
    return ("fix the transcript, add a cleaner that handles it, or set drop_unknown_chars=True "
            "to drop such characters silently as NVIDIA does")


def text_to_sequence(text: str, cleaner_names: Sequence[str] | str,
                     symbol_set: str = "english", drop_unknown: bool = False) -> List[int]:
    """Ids of the symbols of `text` after cleaning.

    English text may hold ARPAbet in curly braces, "Turn left on {HH AW1 S} Street": each phoneme
    becomes its '@'-prefixed symbol, and the text around the braces is cleaned piece by piece.

    Args:
        text: raw transcript.
        cleaner_names: cleaner pipelines to run, in order.
        symbol_set: "english" or "russian".
        drop_unknown: drop characters outside the set silently (NVIDIA) instead of raising;
            a word that would lose every character (a word, not a stray mark) still raises.

    Returns:
        list of ids, length N (no end-of-sequence symbol).

    Raises:
        UnknownCharacterError: characters outside the set, unless drop_unknown (and even then
            when a whole word would vanish).
        ArpabetError: curly braces with a non-English set; an unknown phoneme unless drop_unknown.
        UnknownCleanerError: an unknown cleaner name.
        ValueError: an unknown symbol set.
    """
    if symbol_set != "english" and _curly_re.match(text):
        raise ArpabetError(
            f"ARPAbet braces are only for symbol_set='english', not {symbol_set!r}: "
            f"remove the braces from {text!r}")
    cleaner_names = [cleaner_names] if isinstance(cleaner_names, str) else list(cleaner_names)
    ids, unknown, lost_words = _encode(text, cleaner_names, symbol_set)
    if unknown and (not drop_unknown or lost_words):
        names = ", ".join(repr(u) for u in unknown)
        hint = _hint(unknown, cleaner_names, symbol_set)
        if any(u.startswith("{") and len(u) > 1 for u in unknown):
            raise ArpabetError(f"unknown ARPAbet phoneme(s) {names} in {text!r}; {hint}")
        # drop_unknown drops stray characters, never a whole word
        lost = ""
        if lost_words:
            lost = f" (whole words would vanish: {', '.join(map(repr, lost_words))})"
        raise UnknownCharacterError(
            f"character(s) {names} not in the {symbol_set!r} symbol set after cleaners "
            f"{cleaner_names} in text {text!r}{lost}; {hint}", unknown, text)
    return ids


def sequence_to_text(sequence: Iterable[int], symbol_set: str = "english") -> str:
    """The symbols of `sequence` as a string; ARPAbet comes back in braces ("{HH AH0}").

    Pad ids (0) are skipped, so a padded row reads back as its text.

    Args:
        sequence: ids (a list, or a 1-D tensor/array of integers).

    Raises:
        ValueError: an id outside the symbol set.
    """
    _, id_to_symbol = _table(symbol_set)
    out = []
    for value in sequence:
        i = int(value)
        if i not in id_to_symbol:
            raise ValueError(
                f"symbol id {i} is outside the {symbol_set!r} set (0..{len(id_to_symbol) - 1})")
        s = id_to_symbol[i]
        if s == PAD:
            continue
        out.append("{" + s[1:] + "}" if s.startswith("@") else s)
    # neighbouring phonemes share one pair of braces
    return "".join(out).replace("}{", " ")
