"""English numbers to words, with keithito/NVIDIA's behaviour (their outputs are the contract).

Order matters: commas leave numbers ("1,000" -> "1000"), then pounds ("£5" -> "5 pounds"),
dollars ("$3.50" -> "3 dollars, 50 cents"), decimals ("6.4" -> "6 point 4"), ordinals ("1st" ->
"first"), and last every remaining digit run. Numbers between 1000 and 3000 are read as years:
1999 -> "nineteen ninety-nine", 2008 -> "two thousand eight", 1800 -> "eighteen hundred".
"""
from __future__ import annotations

import re

import functools



@functools.lru_cache(maxsize=1)
def _engine():
    """inflect's engine, built on first use: importing inflect costs seconds."""
    import inflect
    return inflect.engine()

# digits with thousands commas inside: "1,234,567"
_comma_number_re = re.compile(r"([0-9][0-9,]+[0-9])")
# a decimal point between digits: "6.4"
_decimal_number_re = re.compile(r"([0-9]+\.[0-9]+)")
# a pound sign before an amount: "£2500"
_pounds_re = re.compile(r"£([0-9,]*[0-9]+)")
# a dollar sign before an amount with optional cents: "$3.50", "$.01"
_dollars_re = re.compile(r"\$([0-9.,]*[0-9]+)")
# an ordinal: "1st", "22nd", "243rd", "9th"
_ordinal_re = re.compile(r"[0-9]+(st|nd|rd|th)")
# any remaining run of digits
_number_re = re.compile(r"[0-9]+")


def _unit(count: int, singular: str) -> str:
    return singular if count == 1 else singular + "s"


def _spell_dollars(m: re.Match) -> str:
    amount = m.group(1)
    parts = amount.split(".")
    if len(parts) > 2:  # "$1.2.3": not money we can read; keep the digits
        return amount + " dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    if dollars and cents:
        return f"{dollars} {_unit(dollars, 'dollar')}, {cents} {_unit(cents, 'cent')}"
    if dollars:
        return f"{dollars} {_unit(dollars, 'dollar')}"
    if cents:
        return f"{cents} {_unit(cents, 'cent')}"
    return "zero dollars"


def _spell_number(m: re.Match) -> str:
    num = int(m.group(0))
    if 1000 < num < 3000:  # read as a year
        if num == 2000:
            return "two thousand"
        if num < 2010 and num > 2000:
            return "two thousand " + _engine().number_to_words(num % 100)
        if num % 100 == 0:
            return _engine().number_to_words(num // 100) + " hundred"
        # group=2 pairs the digits ("19", "99"); inflect joins the pairs with ", "
        return _engine().number_to_words(num, andword="", zero="oh", group=2).replace(", ", " ")
    return _engine().number_to_words(num, andword="")


# A run of this many digits or more is no quantity anyone reads out (a card or account number):
# it is spelled digit by digit. inflect refuses numbers of 37 digits and more.
LONG_DIGITS_RE = re.compile(r"\d{16,}")


def spell_long_digit_runs(text: str) -> str:
    """"1234567890123456789" -> "1 2 3 ...": each digit of a very long run read on its own."""
    return LONG_DIGITS_RE.sub(lambda m: " ".join(m.group(0)), text)


def normalize_numbers(text: str) -> str:
    """Spell out every number in English text (see the module docstring for the rules)."""
    text = spell_long_digit_runs(text)
    text = _comma_number_re.sub(lambda m: m.group(1).replace(",", ""), text)
    text = spell_long_digit_runs(text)  # "1,000,...,000" has just become one run
    text = _pounds_re.sub(r"\1 pounds", text)
    text = _dollars_re.sub(_spell_dollars, text)
    text = _decimal_number_re.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ordinal_re.sub(lambda m: _engine().number_to_words(m.group(0)), text)
    return _number_re.sub(_spell_number, text)
