"""Symbol sets: the position of a symbol in its list is its id (the row of the embedding).

English is NVIDIA's set, id for id, so NVIDIA checkpoints and filelists keep working:
'_' pad (0), '-' (1), the punctuation "!'(),.:;? " (2-11, space is 11), A-Z (12-37),
a-z (38-63), then the 84 CMUdict ARPAbet symbols prefixed '@' (64-147).

Russian is laid out the same way: '_' pad (0), '-' (1), the same ten punctuation marks (2-11),
the 33 lower-case Cyrillic letters in alphabetical order with 'ё' after 'е' (12-44), and '+'
(45), the stress mark of Russian corpora (RUSLAN, ruaccent-style "+" before the stressed vowel).
There are no capitals (russian_cleaners lower-cases), no quotes (russian_cleaners removes them),
and every dash becomes '-'. 46 symbols.
"""
from __future__ import annotations

from typing import Dict, List

from text.cmudict import valid_symbols

PAD = "_"
_special = "-"
_punctuation = "!'(),.:;? "
_latin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# '@' keeps phonemes apart from letters: "@AA" is one symbol, never 'A', 'A'.
_arpabet = ["@" + s for s in valid_symbols]

_cyrillic = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
STRESS = "+"

_SETS: Dict[str, List[str]] = {
    "english": [PAD] + list(_special) + list(_punctuation) + list(_latin) + _arpabet,
    "russian": [PAD] + list(_special) + list(_punctuation) + list(_cyrillic) + [STRESS],
}

# NVIDIA compatibility: `from text.symbols import symbols` is the English list.
symbols: List[str] = _SETS["english"]


def get_symbols(symbol_set: str) -> List[str]:
    """The symbol list of `symbol_set` ("english" or "russian"); index = id.

    Raises:
        ValueError: for an unknown set, naming the valid ones.
    """
    if symbol_set not in _SETS:
        raise ValueError(
            f"unknown symbol set {symbol_set!r}; choose one of {', '.join(sorted(_SETS))}")
    return list(_SETS[symbol_set])
