"""check_data: each planted fault is reported once, on its line, and no healthy line is flagged."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import check_data
from check_data import Problem, check_filelists, main, run_checks
from hparams import create_hparams
from text import text_to_sequence

SR = 22050
RU = "text_cleaners=[russian_cleaners],symbol_set=russian"
SENTENCES_RU = [
    "Кот спит.",
    "Утром над рекой стоял туман.",
    "Мы долго шли по лесной тропинке, слушая птиц.",
    "Дождь стучал по крыше.",
    "Она купила хлеб, молоко и немного сыра к ужину.",
    "Поезд опоздал на час.",
    "Вечером в парке играла музыка, и люди танцевали до самой ночи.",
    "Где мои ключи?",
    "Старый мост через реку закрыли на ремонт.",
    "Ёжик нашёл яблоко под деревом.",
    "Завтра будет солнечно и тепло.",
    "Дети построили замок из песка на берегу моря.",
    "Чай остыл.",
    "В библиотеке было тихо и пахло старыми книгами.",
    "Ветер сорвал последние листья с берёзы.",
    "Мы встретились на вокзале в полдень.",
    "Пожалуйста, закрой дверь.",
    "Рыбаки вернулись с богатым уловом ещё до рассвета.",
    "Снег шёл всю ночь.",
    "Он прочитал письмо и улыбнулся.",
    "Город просыпался медленно, окна загорались одно за другим.",
    "Собака громко лаяла.",
]
RU_HP = create_hparams(RU)


def n_symbols(text: str, hp=RU_HP) -> int:
    return len(text_to_sequence(text, hp.text_cleaners, hp.symbol_set))


def speech_like(seconds: float, seed: int, sr: int = SR, level: float = 0.3) -> np.ndarray:
    """Noise bursts at a syllable rate: loud, not clipped, length exactly `seconds`."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (level * envelope * rng.uniform(-1, 1, n)).astype(np.float32)


def write(path: Path, wav: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, subtype=subtype)


def healthy(root: Path, name: str, text: str, seed: int, hp=RU_HP, sr: int = SR) -> str:
    """A clip whose length follows its text (0.06 s per symbol, +-5%): a steady speaking rate."""
    jitter = np.random.default_rng(seed + 1000).uniform(0.95, 1.05)
    write(root / "wavs" / name, speech_like(0.06 * n_symbols(text, hp) * jitter, seed, sr), sr)
    return f"wavs/{name}"


def write_list(path: Path, rows) -> str:
    path.write_text("".join(f"{a}|{t}\n" for a, t in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def faulty(tmp_path):
    """A Russian train/val pair with one planted fault of each kind; returns (train, val, expected)
    where expected is {(filelist, line): kind}."""
    texts = SENTENCES_RU
    rows = [(healthy(tmp_path, f"a{i:02d}.wav", t, i), t) for i, t in enumerate(texts)]
    short, long_ = 0, 6  # "Кот спит." and the longest sentence
    assert n_symbols(texts[long_]) > 5 * n_symbols(texts[short])
    rows[short], rows[long_] = (rows[short][0], texts[long_]), (rows[long_][0], texts[short])
    rows[8] = ("wavs/missing.wav", texts[8])
    write(tmp_path / "wavs" / "hifi.wav", speech_like(0.06 * n_symbols(texts[9]), 9, 44100), 44100)
    rows[9] = ("wavs/hifi.wav", texts[9])
    rows[10] = (rows[10][0], "Завтра будет λ солнечно и тепло.")  # Greek: no cleaner maps it
    write(tmp_path / "wavs" / "silent.wav", np.zeros(int(0.06 * n_symbols(texts[11]) * SR)))
    rows[11] = ("wavs/silent.wav", texts[11])
    rows.append(rows[3])  # duplicate of line 4, as line 23
    train = write_list(tmp_path / "train.txt", rows)
    val_rows = [(healthy(tmp_path, f"v{i}.wav", t, 50 + i), t) for i, t in enumerate(texts[12:16])]
    val_rows.append(rows[5])  # line 5 of val is line 6 of train
    val = write_list(tmp_path / "val.txt", val_rows)
    expected = {
        (train, 1): "rate_outlier", (train, 7): "rate_outlier", (train, 9): "missing_audio",
        (train, 10): "sample_rate", (train, 11): "unknown_chars", (train, 12): "silent",
        (train, 23): "duplicate", (val, 5): "overlap",
    }
    return train, val, expected


def test_each_planted_fault_is_reported_on_its_line_and_nothing_else(faulty):
    train, val, expected = faulty
    problems = check_filelists(train, val, RU_HP, decode_audio=True)
    assert {(p.filelist, p.line): p.kind for p in problems} == expected
    assert len(problems) == len(expected)
    severity = {p.kind: p.severity for p in problems}
    assert severity["rate_outlier"] == "warning"
    assert all(severity[k] == "error" for k in set(expected.values()) - {"rate_outlier"})


def test_messages_name_the_file_and_the_fault(faulty):
    train, val, _ = faulty
    by_kind = {p.kind: p for p in check_filelists(train, val, RU_HP)}
    line = str(by_kind["unknown_chars"])
    assert line.startswith(f"{train}:11: error: character(s) 'λ' not in the 'russian' symbol set")
    assert "cleaned text: 'завтра будет λ солнечно и тепло.'" in line
    assert "missing.wav: no such audio file" in by_kind["missing_audio"].message
    assert "hifi.wav: sample rate 44100 Hz, expected 22050 Hz" in by_kind["sample_rate"].message
    assert "silent.wav: silent audio (loudest frame -inf dBFS)" in by_kind["silent"].message
    assert "a03.wav: duplicate of line 4" in by_kind["duplicate"].message
    overlap = by_kind["overlap"].message
    assert f"a05.wav: also in {train} line 6 (train/validation overlap)" in overlap
    rate = by_kind["rate_outlier"].message
    assert "suspected text-audio mismatch" in rate and "robust z=" in rate


def test_rate_outliers_point_both_ways(faulty):
    train, val, _ = faulty
    rates = {p.line: p.message for p in check_filelists(train, val, RU_HP)
             if p.kind == "rate_outlier"}
    assert "fast by robust z=-" in rates[1]  # long text on short audio
    assert "slow by robust z=+" in rates[7]


def test_no_decode_skips_only_the_signal_checks(faulty):
    train, val, expected = faulty
    problems = check_filelists(train, val, RU_HP, decode_audio=False)
    assert {(p.filelist, p.line): p.kind for p in problems} == {
        k: v for k, v in expected.items() if v != "silent"}


def test_latin_letters_are_transliterated_not_flagged(tmp_path):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:10])]
    text = "Мы слушали jazz вечером."
    rows.append((healthy(tmp_path, "latin.wav", text, 99), text))
    assert check_filelists(write_list(tmp_path / "l.txt", rows), None, RU_HP) == []


def test_cli_exit_status_summary_and_write_clean(faulty, tmp_path, capsys):
    train, val, expected = faulty
    out = tmp_path / "clean" / "train_clean.txt"  # another folder: paths must be rewritten
    assert main([train, "--hparams", RU, "--write-clean", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"{train}:9: error: " in printed
    assert "checked 23 lines in 1 filelist(s): 5 error(s), 2 warning(s)" in printed
    assert ("errors: duplicate 1, missing_audio 1, sample_rate 1, silent 1, unknown_chars 1"
            in printed)
    assert "(16 lines kept, 7 dropped)" in printed
    kept = out.read_text(encoding="utf-8").splitlines()
    assert len(kept) == 16 and all(line.startswith("../wavs/a") for line in kept)
    assert main([str(out), "--hparams", RU]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_write_clean_with_two_filelists_fills_a_folder(faulty, tmp_path, capsys):
    train, val, _ = faulty
    out = tmp_path / "cleaned"
    assert main([train, val, "--hparams", RU, "--write-clean", str(out) + os.sep]) == 1
    assert sorted(os.listdir(out)) == ["train.txt", "val.txt"]
    assert len((out / "val.txt").read_text(encoding="utf-8").splitlines()) == 4
    capsys.readouterr()
    assert main([str(out / "train.txt"), str(out / "val.txt"), "--hparams", RU]) == 0


def test_write_clean_refuses_two_filelists_of_one_name(tmp_path, capsys):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:3])]
    (tmp_path / "x").mkdir()
    a = write_list(tmp_path / "list.txt", rows[:2])
    b = write_list(tmp_path / "x" / "list.txt", [(f"../{rows[2][0]}", rows[2][1])])
    assert main([a, b, "--hparams", RU, "--write-clean", str(tmp_path / "out")]) == 2
    assert "filelists share a file name; clean them one by one" in capsys.readouterr().err


def test_warnings_alone_exit_0_and_plots_are_written(tmp_path, capsys):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:12])]
    clip = np.clip(8 * speech_like(0.06 * n_symbols(SENTENCES_RU[12]), 5), -1, 1)
    write(tmp_path / "wavs" / "loud.wav", clip)
    write(tmp_path / "wavs" / "quiet.wav",
          speech_like(0.06 * n_symbols(SENTENCES_RU[13]), 6, level=0.005))
    stereo = speech_like(0.06 * n_symbols(SENTENCES_RU[14]), 7)
    write(tmp_path / "wavs" / "stereo.wav", np.stack([stereo, stereo], axis=1))
    rows += [("wavs/loud.wav", SENTENCES_RU[12]), ("wavs/quiet.wav", SENTENCES_RU[13]),
             ("wavs/stereo.wav", SENTENCES_RU[14])]
    path = write_list(tmp_path / "w.txt", rows)
    plots = tmp_path / "report"
    assert main([path, "--hparams", RU, "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out.replace(str(tmp_path) + os.sep, "")
    assert "w.txt:13: warning: wavs/loud.wav: clipped: " in printed
    assert "near-silent audio (loudest frame -" in printed
    assert "2 channels; training averages them to mono" in printed
    assert "warnings: channels 1, clipping 1, near_silent 1" in printed
    for name in ("durations.png", "speaking_rate.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_length_limits_come_from_hparams(tmp_path):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:10])]
    path = write_list(tmp_path / "l.txt", rows)
    seconds = [sf.info(tmp_path / a).duration for a, _ in rows]
    hp = create_hparams(f"{RU},min_audio_seconds={sorted(seconds)[1] - 1e-3},"
                        f"max_audio_seconds={sorted(seconds)[-2] + 1e-3}")
    problems = check_filelists(path, None, hp, decode_audio=False)
    assert sorted((p.line, p.kind) for p in problems) == sorted(
        [(int(np.argmin(seconds)) + 1, "too_short"), (int(np.argmax(seconds)) + 1, "too_long")])
    assert "shorter than min_audio_seconds=" in str(problems[0]) + str(problems[1])
    assert "longer than max_audio_seconds=" in str(problems[0]) + str(problems[1])


def test_bad_lines_are_each_reported_and_the_rest_still_checked(tmp_path):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:4])]
    (tmp_path / "wavs" / "junk.wav").write_bytes(b"not audio at all")
    write(tmp_path / "wavs" / "empty.wav", np.zeros(0, dtype=np.float32))
    lines = [f"{rows[0][0]}|{rows[0][1]}", "just a path without text",
             f"{rows[1][0]}|   ", f"{rows[2][0]}|a|b|c", f"|{rows[3][1]}",
             f"{rows[3][0]}|{rows[3][1]}|", "wavs/junk.wav|Мусор.", "wavs/empty.wav|Пусто.",
             f"{rows[3][0]}|!?"]
    path = tmp_path / "bad.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8") + b"\xff\xfe|x\n")
    problems = check_filelists(str(path), None, RU_HP, decode_audio=True)
    got = [(p.line, p.kind, p.message) for p in problems]
    # line 9 ("!?", punctuation alone) passed before no_letters became an error
    assert [(line, kind) for line, kind, _ in got] == [
        (2, "bad_line"), (3, "empty_text"), (4, "bad_line"), (5, "bad_line"), (6, "bad_line"),
        (7, "unreadable_audio"), (8, "empty_audio"), (9, "no_letters"), (10, "bad_line")]
    messages = dict(((line, kind), m) for line, kind, m in got)
    assert messages[(2, "bad_line")] == ("expected 'audio_path|text' or 'audio_path|text|speaker',"
                                         " found 1 field(s) separated by '|'")
    assert messages[(3, "empty_text")] == f"empty text for {rows[1][0]}"
    assert messages[(5, "bad_line")] == "empty audio path"
    assert messages[(6, "bad_line")] == "empty speaker name after the second '|'"
    assert "junk.wav: cannot read audio header" in messages[(7, "unreadable_audio")]
    assert messages[(8, "empty_audio")].endswith("empty.wav: the file holds no samples")
    assert messages[(10, "bad_line")].startswith("not UTF-8 (invalid start byte at byte 0)")


def test_punctuation_only_text_is_an_error(tmp_path):
    rows = [(healthy(tmp_path, "a.wav", "Кот спит.", 0), "…")]
    problems = check_filelists(write_list(tmp_path / "l.txt", rows), None, RU_HP)
    # "..." is three symbols, so not empty; but nothing in it is pronounced
    assert [(p.severity, p.kind, p.message) for p in problems] == [
        ("error", "no_letters", "text '…' has no letters (cleaned: '...'); write out what is "
                                "said or drop the line")]
    rows = [(rows[0][0], "«»")]
    problems = check_filelists(write_list(tmp_path / "l.txt", rows), None, RU_HP)
    assert [(p.kind, p.message) for p in problems] == [
        ("empty_text", "text '«»' cleans to no symbols")]


def test_dropped_characters_are_a_warning_under_drop_unknown(tmp_path):
    hp = create_hparams(f"{RU},drop_unknown_chars=true")
    rows = [(healthy(tmp_path, "a.wav", "Кот спит.", 0), "Кот § спит.")]
    problems = check_filelists(write_list(tmp_path / "l.txt", rows), None, hp)
    assert [(p.severity, p.kind) for p in problems] == [("warning", "dropped_chars")]
    assert "character(s) '§' outside the 'russian' set will be dropped" in problems[0].message


def test_english_text_with_a_character_outside_the_set(tmp_path):
    hp = create_hparams()
    text = "The price is 5 # today."
    rows = [(healthy(tmp_path, "a.wav", "The price is five today.", 0, hp), text)]
    (problem,) = check_filelists(write_list(tmp_path / "l.txt", rows), None, hp)
    assert problem.kind == "unknown_chars"
    assert ("'#' not in the 'english' symbol set after cleaners ['english_cleaners']"
            in problem.message)
    assert "cleaned text: 'the price is five # today.'" in problem.message


def test_missing_filelist_and_problem_format(tmp_path):
    missing = str(tmp_path / "nope.txt")
    (problem,) = check_filelists(missing)
    # the message names what the folder holds (here: nothing)
    message = f"no such filelist; {tmp_path}/ holds no files"
    assert problem == Problem(missing, 0, "error", "bad_filelist", message)
    assert str(problem) == f"{missing}: error: {message}"
    (tmp_path / "train.txt").write_text("a.wav|A.\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("b.wav|B.\n", encoding="utf-8")
    (problem,) = check_filelists(str(tmp_path / "trian.txt"))
    assert problem.message == f"no such filelist; filelists in {tmp_path}/: train.txt, val.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n", encoding="utf-8")
    assert str(check_filelists(str(empty))[0]).endswith("error: the filelist holds no utterances")
    assert str(Problem("a.txt", 3, "warning", "too_long", "x")) == "a.txt:3: warning: x"


def test_rate_check_needs_enough_lines(tmp_path):
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:4])]
    rows[0], rows[1] = (rows[0][0], rows[1][1]), (rows[1][0], rows[0][1])
    report = run_checks([write_list(tmp_path / "l.txt", rows)], RU_HP, decode_audio=False)
    assert report.problems == [] and report.rate_median is None
    assert "speaking rate: not checked (needs 8 usable lines)" in check_data.summary(report, ["l"])


def test_default_filelists_and_bad_hparams(capsys, monkeypatch):
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    assert main(["--no-decode"]) == 0
    assert "checked 210 lines in 2 filelist(s)" in capsys.readouterr().out
    assert main(["--hparams", "no_such_hparam=1"]) == 2
    assert "unknown hparam 'no_such_hparam'" in capsys.readouterr().err


def _long_and_letterless(tmp_path):
    """Ten healthy lines, the longest clip over max_audio_seconds, and a "?!..." transcript.

    Returns (filelist, hparams string, line of the long clip, line of the letterless text).
    """
    rows = [(healthy(tmp_path, f"a{i}.wav", t, i), t) for i, t in enumerate(SENTENCES_RU[:10])]
    rows.append((healthy(tmp_path, "q.wav", "Где мои ключи?", 77), "?!..."))
    seconds = [sf.info(tmp_path / a).duration for a, _ in rows[:10]]
    limit = sorted(seconds)[-2] + 1e-3  # only the longest clip is over it
    path = write_list(tmp_path / "l.txt", rows)
    return path, f"{RU},max_audio_seconds={limit}", int(np.argmax(seconds)) + 1, 11


def test_long_audio_and_letterless_text_are_errors_that_write_clean_drops(tmp_path, capsys):
    path, hparams, long_line, letterless_line = _long_and_letterless(tmp_path)
    problems = check_filelists(path, None, create_hparams(hparams), decode_audio=False)
    assert sorted((p.line, p.severity, p.kind) for p in problems) == sorted(
        [(long_line, "error", "too_long"), (letterless_line, "error", "no_letters")])
    too_long = next(p for p in problems if p.kind == "too_long")
    assert "longer than max_audio_seconds=" in too_long.message
    assert "split the clip, drop the line (--write-clean) or raise max_audio_seconds" in \
        too_long.message
    out = tmp_path / "clean.txt"
    assert main([path, "--hparams", hparams, "--no-decode", "--write-clean", str(out)]) == 1
    assert "errors: no_letters 1, too_long 1" in capsys.readouterr().out
    kept = out.read_text(encoding="utf-8").splitlines()
    assert len(kept) == 9 and not any(line.endswith("|?!...") for line in kept)
    assert main([str(out), "--hparams", hparams, "--no-decode"]) == 0


@pytest.mark.slow  # starts train.py
def test_training_refuses_to_start_on_long_audio_or_letterless_text(tmp_path):
    import subprocess
    import sys

    path, hparams, _, _ = _long_and_letterless(tmp_path)
    val = write_list(tmp_path / "val.txt", [(healthy(tmp_path, f"v{i}.wav", t, 50 + i), t)
                                            for i, t in enumerate(SENTENCES_RU[16:19:2])])
    # without the two planted errors the same data passes: they alone stop training
    assert check_filelists(val, None, create_hparams(hparams), decode_audio=False) == []
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(root / "train.py"), f"--output_directory={tmp_path / 'out'}",
           f"--log_directory={tmp_path / 'logs'}", f"--tensorboard_directory={tmp_path / 'tb'}",
           f"--hparams=preset=tiny,{hparams},training_files={path},validation_files={val}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    printed = proc.stdout + proc.stderr
    log = tmp_path / "logs" / "train.log"
    if log.exists():
        printed += log.read_text(encoding="utf-8")
    assert "longer than max_audio_seconds=" in printed and "has no letters" in printed
    # the refusal's one line on stderr, as every bad input gives, with no traceback
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: data check: 2 error(s)")
    assert "Traceback" not in proc.stderr
