"""Text front end: symbol layout, cleaners (English and Russian), sequences, and every error."""
import pytest
import torch

from text import (ArpabetError, UnknownCharacterError, UnknownCleanerError, clean_text,
                  sequence_to_text, text_to_sequence, unknown_characters)
from text import cleaners
from text.cmudict import CMUDict, valid_symbols
from text.numbers import normalize_numbers
from text.numbers_ru import normalize_numbers_ru, plural_form
from text.symbols import PAD, get_symbols, symbols

PUNCTUATION = "!'(),.:;? "
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"


# ------------------------------------------------------------------ symbol sets

def test_english_set_has_nvidia_layout():
    # ids follow from the construction: pad, '-', punctuation, A-Z, a-z, '@' + ARPAbet
    first_upper = 2 + len(PUNCTUATION)
    first_lower = first_upper + len(UPPER)
    first_arpabet = first_lower + len(UPPER)
    assert len(symbols) == first_arpabet + len(valid_symbols) == 148
    assert symbols[0] == PAD == "_"
    assert symbols[1] == "-"
    assert symbols[2:first_upper] == list(PUNCTUATION)
    assert symbols.index(" ") == 11
    assert symbols.index("A") == first_upper == 12
    assert symbols.index("a") == first_upper + 26 == 38
    assert symbols.index("z") == first_arpabet - 1 == 63
    assert symbols[first_arpabet:] == ["@" + s for s in valid_symbols]
    assert symbols.index("@AA") == 64 and symbols.index("@ZH") == 147
    assert get_symbols("english") == symbols


def test_cmudict_symbols_in_cmudict_order():
    assert len(valid_symbols) == 84
    assert valid_symbols == sorted(valid_symbols)
    assert valid_symbols[:5] == ["AA", "AA0", "AA1", "AA2", "AE"]
    assert valid_symbols[-3:] == ["Y", "Z", "ZH"]


def test_russian_set_layout():
    ru = get_symbols("russian")
    assert ru[:12] == symbols[:12]  # pad, '-', punctuation shared with English
    assert ru[12:12 + 33] == list(CYRILLIC)
    assert ru.index("ё") == ru.index("е") + 1
    assert ru[-1] == "+" and len(ru) == 46
    assert len(set(ru)) == len(ru)


def test_unknown_symbol_set():
    message = "unknown symbol set 'german'; choose one of english, russian"
    with pytest.raises(ValueError, match=message):
        get_symbols("german")
    with pytest.raises(ValueError, match="unknown symbol set 'german'"):
        text_to_sequence("hi", ["basic_cleaners"], symbol_set="german")


# ------------------------------------------------------------------ English numbers (NVIDIA)

@pytest.mark.parametrize("raw, spoken", [
    ("1", "one"),
    ("101", "one hundred one"),
    ("1000", "one thousand"),
    ("1800", "eighteen hundred"),
    ("1901", "nineteen oh one"),
    ("1999", "nineteen ninety-nine"),
    ("2000", "two thousand"),
    ("2008", "two thousand eight"),
    ("2025", "twenty twenty-five"),
    ("1,234", "twelve thirty-four"),
    ("3000", "three thousand"),
    ("12345", "twelve thousand, three hundred forty-five"),
    ("124,001", "one hundred twenty-four thousand one"),
    ("6.4 sec", "six point four sec"),
    ("1st", "first"),
    ("22nd", "twenty-second"),
    ("243rd place", "two hundred and forty-third place"),
    ("$3.50", "three dollars, fifty cents"),
    ("$1", "one dollar"),
    ("$.01", "one cent"),
    ("$0.00", "zero dollars"),
    ("$40,000", "forty thousand dollars"),
    ("for £2500!", "for twenty-five hundred pounds!"),
])
def test_normalize_numbers(raw, spoken):
    assert normalize_numbers(raw) == spoken


@pytest.mark.parametrize("abbreviation, expansion", [
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
    ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"),
    ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"),
    ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"),
    ("ft", "fort"),
])
def test_english_abbreviations(abbreviation, expansion):
    assert cleaners.english_cleaners(f"{abbreviation.capitalize()}. Smith") == f"{expansion} smith"


@pytest.mark.parametrize("raw, english, transliteration, basic", [
    ("Mr. Müller ate  2 Apples", "mister muller ate two apples", "mr. muller ate 2 apples",
     "mr. müller ate 2 apples"),
    ("Dr. Smith paid $3.50 on the 1st of May, 1999.",
     "doctor smith paid three dollars, fifty cents on the first of may, nineteen ninety-nine.",
     "dr. smith paid $3.50 on the 1st of may, 1999.",
     "dr. smith paid $3.50 on the 1st of may, 1999."),
    ("Привет,\tмир", "privet, mir", "privet, mir", "привет, мир"),
])
def test_english_pipelines(raw, english, transliteration, basic):
    assert cleaners.english_cleaners(raw) == english
    assert cleaners.transliteration_cleaners(raw) == transliteration
    assert cleaners.basic_cleaners(raw) == basic


def test_collapse_whitespace_keeps_ends_like_nvidia():
    assert cleaners.collapse_whitespace(" x.  y,\t\nz ") == " x. y, z "


# ------------------------------------------------------------------ Russian

@pytest.mark.parametrize("raw, spoken", [
    ("21", "двадцать один"),
    ("3,5", "три целых пять десятых"),
    ("0.25", "ноль целых двадцать пять сотых"),
    ("-5 градусов", "минус пять градусов"),
    ("2+2", "два плюс два"),
    ("сл+ово", "сл+ово"),
    ("10\u00a0000", "десять тысяч"),
    ("5км", "пять км"),
    ("от 10-15 лет", "от десять-пятнадцать лет"),
    ("1 руб. и 2 коп.", "один рубль и две копейки."),  # a final abbreviation keeps its stop
    ("11 руб. 22 коп", "одиннадцать рублей двадцать две копейки"),
    ("5%", "пять процентов"),
    ("2,5%", "две целых пять десятых процента"),
    ("$5", "пять долларов"),
    ("3 €", "три евро"),
    ("2 тыс. человек", "две тысячи человек"),
    ("1 млн", "один миллион"),
    ("в 1999 г. и 2000 г.", "в тысяча девятьсот девяносто девятом году и двухтысячного года."),
    ("к 2000 году", "к двухтысячному году"),
    ("1-й", "первый"),
    ("2-го", "второго"),
    ("5-м классе", "пятом классе"),
    ("1-я", "первая"),
    ("1-е мая", "первое мая"),
    ("1990-х", "тысяча девятьсот девяностых"),
    ("5-ти", "пяти"),
])
def test_normalize_numbers_ru(raw, spoken):
    assert normalize_numbers_ru(raw) == spoken


@pytest.mark.parametrize("number, form", [
    (1, "рубль"), (2, "рубля"), (4, "рубля"), (5, "рублей"), (11, "рублей"), (14, "рублей"),
    (21, "рубль"), (22, "рубля"), (111, "рублей"),
])
def test_plural_form(number, form):
    assert plural_form(number, ("рубль", "рубля", "рублей")) == form


@pytest.mark.parametrize("raw, cleaned", [
    ("Ёжик и ЁЛКА", "ёжик и ёлка"),  # ё is never folded into е
    ("Мол+око и молоко́", "мол+око и молок+о"),  # '+' kept, an acute becomes '+' before the vowel
    ("Он сказал: «Да» — и ушёл…", "он сказал: да - и ушёл..."),
    ("Цена: 1 руб. 21 коп.", "цена: один рубль двадцать одна копейка."),
    ("Скидка 2,5% до 31-го числа",
     "скидка две целых пять десятых процента до тридцать первого числа"),
    ("Было -5 градусов, т. е. холодно", "было минус пять градусов, то есть холодно"),
    ("В 1999 г. в г. Москве", "в тысяча девятьсот девяносто девятом году в город москве"),
    ("Шоколад, конфеты и т.д.", "шоколад, конфеты и так далее."),
    ("Дом № 5 на ул. Ленина", "дом номер пять на улица ленина"),
    ("Я люблю Python и Wi-Fi", "я люблю питон и ви-фи"),
    ("Shchuka zhila, Café", "щука жила, кафе"),
    ("  кот\u00a0и   пёс ", " кот и пёс "),
])
def test_russian_cleaners(raw, cleaned):
    assert cleaners.russian_cleaners(raw) == cleaned


# ------------------------------------------------------------------ sequences

def test_english_ids_equal_nvidia():
    # NVIDIA: english_cleaners, then each character's index in the 148-symbol list, no EOS
    seq = text_to_sequence("Dr. Smith, 2 Apples!", ["english_cleaners"])
    assert seq == [symbols.index(c) for c in "doctor smith, two apples!"]


def test_arpabet_braces():
    seq = text_to_sequence("Turn left on {HH AW1 S} Street.", ["english_cleaners"])
    expected = ([symbols.index(c) for c in "turn left on "]
                + [symbols.index("@" + p) for p in ("HH", "AW1", "S")]
                + [symbols.index(c) for c in " street."])
    assert seq == expected
    # lower-case phonemes are read as upper case
    assert text_to_sequence("{hh aw1 s}", ["english_cleaners"]) == expected[13:16]


@pytest.mark.parametrize("raw, cleaners_, symbol_set, back", [
    ("Turn left on {HH AW1 S} {L OW1} Street.", ["english_cleaners"], "english",
     "turn left on {HH AW1 S} {L OW1} street."),
    ("{HH AH0 L OW1}", ["english_cleaners"], "english", "{HH AH0 L OW1}"),
    ("Hello, World!", ["basic_cleaners"], "english", "hello, world!"),
    ("Ёлка, мол+око: 2 кота!", ["russian_cleaners"], "russian", "ёлка, мол+око: два кота!"),
])
def test_round_trip(raw, cleaners_, symbol_set, back):
    seq = text_to_sequence(raw, cleaners_, symbol_set=symbol_set)
    assert sequence_to_text(seq, symbol_set=symbol_set) == back


def test_russian_ids_from_russian_set():
    ru = get_symbols("russian")
    assert text_to_sequence("Ёж+ик", ["russian_cleaners"], "russian") == [
        ru.index(c) for c in "ёж+ик"]


def test_sequence_to_text_skips_pad_and_takes_tensors():
    seq = torch.tensor(text_to_sequence("hi!", ["basic_cleaners"]) + [0, 0])
    assert sequence_to_text(seq) == "hi!"


def test_clean_text_accepts_one_name_or_several():
    assert clean_text("Mr. X  1", "english_cleaners") == "mister x one"
    assert clean_text("Mr. X  1", ["basic_cleaners"]) == "mr. x 1"
    assert clean_text("Mr. X", []) == "Mr. X"


# ------------------------------------------------------------------ errors and drop_unknown

def test_cyrillic_through_english_set_names_characters_text_and_fix():
    with pytest.raises(UnknownCharacterError) as info:
        text_to_sequence("жил был", ["basic_cleaners"])
    message = str(info.value)
    assert "'ж', 'и', 'л', 'б', 'ы'" in message
    assert "'жил был'" in message
    assert "whole words would vanish: 'жил', 'был'" in message
    assert "russian_cleaners" in message and "symbol_set='russian'" in message
    assert info.value.characters == ["ж", "и", "л", "б", "ы"]
    assert info.value.text == "жил был"


@pytest.mark.parametrize("raw, cleaners_, symbol_set, bad, hint", [
    ("Hi 5", ["basic_cleaners"], "english", "'5'", "spell numbers out"),
    ("Hi_there", ["english_cleaners"], "english", "'_'", "'_' is the padding symbol"),
    ("Hi #1", ["english_cleaners"], "english", "'#'", "drop_unknown_chars=True"),
    ("Hello", ["basic_cleaners"], "russian", "'h', 'e', 'l', 'o'", "transliterates Latin"),
    ("Ёлка", [], "russian", "'Ё'", "which lower-cases"),
])
def test_unknown_character_messages(raw, cleaners_, symbol_set, bad, hint):
    with pytest.raises(UnknownCharacterError) as info:
        text_to_sequence(raw, cleaners_, symbol_set=symbol_set)
    assert f"character(s) {bad} not in the {symbol_set!r} symbol set" in str(info.value)
    assert repr(raw) in str(info.value)
    assert hint in str(info.value)


def test_drop_unknown_drops_stray_characters():
    assert text_to_sequence('a "b" #', ["basic_cleaners"], drop_unknown=True) == [
        symbols.index(c) for c in "a b "]
    assert text_to_sequence("{HH XX}", ["english_cleaners"], drop_unknown=True) == [
        symbols.index("@HH")]


def test_drop_unknown_never_drops_whole_words():
    with pytest.raises(UnknownCharacterError, match="whole words would vanish: 'был'"):
        text_to_sequence("hi был", ["basic_cleaners"], drop_unknown=True)


def test_unknown_phoneme():
    message = r"unknown ARPAbet phoneme\(s\) '\{XX\}' in 'Hi \{XX\}'; write CMUdict ARPAbet"
    with pytest.raises(ArpabetError, match=message):
        text_to_sequence("Hi {XX}", ["english_cleaners"])


def test_braces_with_russian():
    with pytest.raises(ArpabetError, match="ARPAbet braces are only for symbol_set='english', "
                                           "not 'russian': remove the braces from"):
        text_to_sequence("привет {HH AH0}", ["russian_cleaners"], symbol_set="russian",
                         drop_unknown=True)


def test_unknown_cleaner():
    message = ("unknown cleaner 'englsh_cleaners'; valid cleaners: basic_cleaners, "
               "transliteration_cleaners, english_cleaners, russian_cleaners")
    with pytest.raises(UnknownCleanerError, match=message):
        text_to_sequence("hi", ["englsh_cleaners"])
    assert issubclass(UnknownCleanerError, ValueError)


def test_sequence_to_text_bad_id():
    with pytest.raises(ValueError, match=r"symbol id 148 is outside the 'english' set \(0..147\)"):
        sequence_to_text([1, 148])


@pytest.mark.parametrize("raw, cleaners_, symbol_set, found", [
    ("fine text.", ["english_cleaners"], "english", []),
    ("жил 5", ["basic_cleaners"], "english", ["ж", "и", "л", "5"]),
    ("a {XX} b", ["english_cleaners"], "english", ["{XX}"]),
    ("кот #1", ["russian_cleaners"], "russian", ["#"]),
])
def test_unknown_characters(raw, cleaners_, symbol_set, found):
    assert unknown_characters(raw, cleaners_, symbol_set) == found


# ------------------------------------------------------------------ CMUdict reader

def test_cmudict_reads_user_file(tmp_path):
    path = tmp_path / "cmudict.txt"
    path.write_text(";;; comment\nHELLO  HH AH0 L OW1\nHELLO(1)  HH EH0 L OW1\n"
                    "READ  R IY1 D\nBAD  XX YY\n", encoding="latin-1")
    d = CMUDict(str(path))
    assert len(d) == 2
    assert d.lookup("hello") == ["HH AH0 L OW1", "HH EH0 L OW1"]
    assert d.lookup("Bad") is None
    assert CMUDict(path, keep_ambiguous=False).lookup("hello") is None
    with open(path, encoding="latin-1") as f:
        assert CMUDict(f).lookup("read") == ["R IY1 D"]


@pytest.mark.parametrize("cleaners,symbol_set,digit", [
    (["english_cleaners"], "english", "nine"), (["russian_cleaners"], "russian", "девять")])
def test_very_long_numbers_are_read_digit_by_digit(cleaners, symbol_set, digit):
    """inflect refuses 37 digits and num2words 34: such runs (account numbers, fuzzed text) are
    read one digit at a time instead of failing with a traceback."""
    from text import clean_text, text_to_sequence

    text = "abc " + "9" * 50 + " def"
    cleaned = clean_text(text, cleaners)
    assert cleaned.count(digit) == 50
    assert text_to_sequence(text, cleaners, symbol_set)
    assert "twelve" in clean_text("12 apples", ["english_cleaners"])  # short numbers as before
