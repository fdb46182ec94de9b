"""Russian numbers to words with num2words(lang="ru").

Covered, in this order:
- thousands written with a no-break or thin space: "10 000" (U+00A0, U+202F, U+2009) -> 10000.
  A plain space is not a thousands separator here: "в 5 000" stays two numbers.
- digits glued to letters get a space: "5км" -> "5 км".
- signs: "-5" / "−5" (minus not after a letter or digit) -> "минус 5"; a '+' touching no letter
  -> "плюс" ("+3", "2 + 2"). A '+' next to a letter is a stress mark and stays.
- a number with a unit agrees with it: "1 руб." -> "один рубль", "2 коп." -> "две копейки",
  "5%" -> "пять процентов", "$5" / "5 $" -> "пять долларов", "3 €" -> "три евро",
  "2 тыс." -> "две тысячи", "3 млн" -> "три миллиона", "4 млрд" -> "четыре миллиарда";
  a decimal takes the genitive singular: "2,5%" -> "две целых пять десятых процента".
- years are ordinals: "в 1999 г." / "в 1999 году" -> "в тысяча девятьсот девяносто девятом
  году"; "1999 г." elsewhere -> "... девятого года"; "1999 год(а, у, ом)" agree with the noun
  ("к 2000 году" is dative).
- ordinals with a hyphenated ending: "1-й" первый, "2-го" второго, "3-му" третьему,
  "5-м" пятом (prepositional; "-ым" is instrumental), "1-я" первая, "1-ю" первую, "1-ой"/"1-ей"
  первой, "1-е" первое (neuter; the plural "1990-е" is not told apart), "90-х" девяностых,
  "90-ми" девяностыми; "5-ти" is the genitive cardinal пяти.
- decimals with a comma or a point: "3,5" -> "три целых пять десятых".
- every remaining digit run as a cardinal: "21" -> "двадцать один".
An abbreviated unit that ends the text keeps its full stop ("... 2 коп." -> "... копейки.").
Not covered: dates like "01.05.2020", times "12:30", fractions "1/2", Roman numerals, and case
agreement of plain cardinals with the words around them (num2words gives the nominative).
"""
from __future__ import annotations

import re
from typing import Tuple

from num2words import num2words

from text.numbers import spell_long_digit_runs

# a no-break / narrow no-break / thin space between digit groups: "10 000"
_thousands_space_re = re.compile(r"(?<=\d)[\u00a0\u202f\u2009](?=\d{3}(?!\d))")
# the seam between a digit and a letter: "5км", "x5"
_glued_re = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")
# a minus sign that is not a hyphen between words or a range: "-5", "−5", but not "2-3"
_minus_re = re.compile(r"(?<![\w.,])[-\u2212](?=\d)")
# a '+' with no letter on either side (a letter beside it makes it a stress mark)
_plus_re = re.compile(r"(?<![^\W\d_])\+(?![^\W\d_])")
# a dollar sign before an amount: "$5", "$2,50"
_dollar_prefix_re = re.compile(r"\$\s?(\d+(?:[.,]\d+)?)")
# an amount followed by a unit: "5 руб.", "2 коп.", "5%", "3 млн"
_unit_re = re.compile(
    r"(\d+(?:[.,]\d+)?)\s?(руб(?:\.|\b)|₽|коп(?:\.|\b)|%|\$|€|тыс\.|млн\b\.?|млрд\b\.?)")
# a year with "г." or a form of "год": "в 1999 г.", "2000 году"
_year_re = re.compile(r"(?:\b([вк])\s+)?(\d+)\s?(г\.|год(?:а|у|ом)?\b)")
# a number with a hyphenated ordinal ending: "1-й", "2-го", "90-х"
_ordinal_re = re.compile(r"(\d+)-([а-яё]{1,3})\b")
# a decimal fraction with a comma or a point: "3,5", "0.25"
_decimal_re = re.compile(r"(\d+)[.,](\d+)")
# any remaining run of digits
_number_re = re.compile(r"\d+")

# unit -> (forms for 1, for 2-4, for 5-20; the grammatical gender of the unit)
_UNITS = {
    "руб": (("рубль", "рубля", "рублей"), "m"),
    "₽": (("рубль", "рубля", "рублей"), "m"),
    "коп": (("копейка", "копейки", "копеек"), "f"),
    "%": (("процент", "процента", "процентов"), "m"),
    "$": (("доллар", "доллара", "долларов"), "m"),
    "€": (("евро", "евро", "евро"), "m"),
    "тыс": (("тысяча", "тысячи", "тысяч"), "f"),
    "млн": (("миллион", "миллиона", "миллионов"), "m"),
    "млрд": (("миллиард", "миллиарда", "миллиардов"), "m"),
}

# ordinal ending -> (case, gender or "p" for plural) as num2words names them
_ORDINAL_ENDINGS = {
    "й": ("n", "m"), "ый": ("n", "m"), "ий": ("n", "m"),
    "го": ("g", "m"), "ого": ("g", "m"), "его": ("g", "m"),
    "му": ("d", "m"), "ому": ("d", "m"), "ему": ("d", "m"),
    "м": ("p", "m"), "ом": ("p", "m"), "ем": ("p", "m"),
    "ым": ("i", "m"), "им": ("i", "m"),
    "я": ("n", "f"), "ая": ("n", "f"), "яя": ("n", "f"),
    "ю": ("a", "f"), "ую": ("a", "f"), "юю": ("a", "f"),
    "ой": ("g", "f"), "ей": ("g", "f"),
    "е": ("n", "n"), "ое": ("n", "n"), "ее": ("n", "n"),
    "х": ("g", "p"), "ых": ("g", "p"), "их": ("g", "p"),
    "ми": ("i", "p"), "ыми": ("i", "p"), "ими": ("i", "p"),
}

# form of "год" -> the case its ordinal takes
_YEAR_NOUN_CASES = {"год": "n", "года": "g", "году": "p", "годом": "i"}


def plural_form(number: int, forms: Tuple[str, str, str]) -> str:
    """The noun form that agrees with `number`: forms = (1, 2-4, 5-20), e.g. рубль/рубля/рублей."""
    n = abs(number) % 100
    if 11 <= n <= 14:
        return forms[2]
    if n % 10 == 1:
        return forms[0]
    if 2 <= n % 10 <= 4:
        return forms[1]
    return forms[2]


def _cardinal(digits: str, gender: str = "m") -> str:
    if "." in digits or "," in digits:
        return num2words(digits.replace(",", "."), lang="ru")
    return num2words(int(digits), lang="ru", gender=gender)


def _ordinal(number: int, case: str, gender: str) -> str:
    plural = gender == "p"
    return num2words(number, lang="ru", to="ordinal", case=case,
                     gender="m" if plural else gender, plural=plural, animate=False)


def _spell_amount(digits: str, unit_key: str) -> str:
    forms, gender = _UNITS[unit_key]
    words = _cardinal(digits, gender)
    if "." in digits or "," in digits:
        return f"{words} {forms[1]}"  # fractions take the genitive singular
    return f"{words} {plural_form(int(digits), forms)}"


def _full_stop(m: re.Match, written: str) -> str:
    """'.' when an abbreviation with a full stop ends the text: it ended the sentence too."""
    return "." if written.endswith(".") and not m.string[m.end():].strip() else ""


def _spell_unit(m: re.Match) -> str:
    unit = m.group(2).rstrip(".")
    return _spell_amount(m.group(1), unit) + _full_stop(m, m.group(2))


def _spell_year(m: re.Match) -> str:
    preposition, digits, noun = m.group(1), m.group(2), m.group(3)
    stop = _full_stop(m, noun)
    if noun == "г.":  # "в 1999 г." -> году; otherwise the common "... года"
        noun = {"в": "году", "к": "году"}.get(preposition, "года")
    case = _YEAR_NOUN_CASES[noun]
    if noun == "году" and preposition == "к":
        case = "d"
    words = _ordinal(int(digits), case, "m")
    return (f"{preposition} " if preposition else "") + f"{words} {noun}{stop}"


def _spell_ordinal(m: re.Match) -> str:
    ending = m.group(2)
    if ending == "ти":  # "5-ти": a cardinal in the genitive, "пяти"
        return num2words(int(m.group(1)), lang="ru", case="g")
    if ending not in _ORDINAL_ENDINGS:  # an ending we cannot read: the number, then the ending
        return f"{_cardinal(m.group(1))} {ending}"
    case, gender = _ORDINAL_ENDINGS[ending]
    return _ordinal(int(m.group(1)), case, gender)


def _spell_plus(m: re.Match) -> str:
    before = " " if m.start() > 0 and m.string[m.start() - 1].isdigit() else ""
    after = " " if m.string[m.end():m.end() + 1].isdigit() else ""
    return f"{before}плюс{after}"


def normalize_numbers_ru(text: str) -> str:
    """Spell out the numbers of lower-case Russian text (see the module docstring for the rules).

    Args:
        text: Russian text, already lower-cased (units such as "руб." are matched in lower case).

    Returns:
        The text with every digit replaced by Russian words.
    """
    text = _thousands_space_re.sub("", text)
    # num2words fails on numbers of 34 digits and more: very long runs are read digit by digit
    text = spell_long_digit_runs(text)
    text = _glued_re.sub(" ", text)
    text = _minus_re.sub("минус ", text)
    text = _plus_re.sub(_spell_plus, text)
    text = _dollar_prefix_re.sub(lambda m: _spell_amount(m.group(1), "$"), text)
    text = _unit_re.sub(_spell_unit, text)
    text = _year_re.sub(_spell_year, text)
    text = _ordinal_re.sub(_spell_ordinal, text)
    text = _decimal_re.sub(lambda m: _cardinal(m.group(0)), text)
    return _number_re.sub(lambda m: _cardinal(m.group(0)), text)
