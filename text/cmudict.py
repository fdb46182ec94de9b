"""The ARPAbet phoneme inventory of CMUdict and a reader for a user-provided dictionary file.

Nothing is downloaded: pass the path of your own copy (e.g. `cmudict-0.7b`, Latin-1 encoded,
lines `WORD  P1 P2 ...`, alternates written `WORD(1)`, comments starting with `;;;`).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional

# Vowels carry a stress digit (0 none, 1 primary, 2 secondary); CMUdict also lists the bare vowel.
_VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
_CONSONANTS = ["B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S",
               "SH", "T", "TH", "V", "W", "Y", "Z", "ZH"]

# CMUdict's own order is plain string order: 'AA' < 'AA0' < ... < 'ZH' (84 symbols).
valid_symbols: List[str] = sorted(
    [v + s for v in _VOWELS for s in ("", "0", "1", "2")] + _CONSONANTS)

_valid_symbol_set = frozenset(valid_symbols)

# "WORD(2)" -> "WORD": numbered alternate pronunciations share the head word.
_alternate_re = re.compile(r"\(\d+\)$")


class CMUDict:
    """Word -> list of ARPAbet pronunciations, read from a CMUdict-format file.

    Args:
        file_or_path: a path, or an open text file, in CMUdict format.
        keep_ambiguous: keep words that have more than one pronunciation.

    Entries holding a phoneme outside `valid_symbols` are skipped.
    """

    def __init__(self, file_or_path, keep_ambiguous: bool = True):
        if isinstance(file_or_path, (str, os.PathLike)):
            with open(file_or_path, encoding="latin-1") as f:
                entries = _parse_cmudict(f)
        else:
            entries = _parse_cmudict(file_or_path)
        if not keep_ambiguous:
            entries = {word: prons for word, prons in entries.items() if len(prons) == 1}
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, word: str) -> Optional[List[str]]:
        """Pronunciations of `word` (any case) as space-separated phoneme strings, or None."""
        return self._entries.get(word.upper())


def _parse_cmudict(lines: Iterable[str]) -> Dict[str, List[str]]:
    entries: Dict[str, List[str]] = {}
    for line in lines:
        if not line.strip() or line.startswith(";;;"):
            continue
        parts = line.split()
        word = _alternate_re.sub("", parts[0].upper())
        phonemes = parts[1:]
        if not phonemes or any(p not in _valid_symbol_set for p in phonemes):
            continue
        entries.setdefault(word, []).append(" ".join(phonemes))
    return entries
