"""prepare_dataset: each input format on a tiny generated corpus, the audio options, the errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import prepare_dataset
from audio import mel_from_file
from data_utils import read_filelist
from hparams import create_hparams
from prepare_dataset import PrepareError, main, prepare, split_items

EN = ["The cat sat on the mat.", "Rain is falling softly.", "We walked home together.",
      "A bird sang in the tree.", "The soup was far too hot.", "Bread and butter, please."]
RU = ["Кот спит на окне.", "Идёт тихий дождь.", "Мы шли домой вместе.",
      "Птица пела на дереве.", "Суп был слишком горячим."]


def tone(seconds: float, sr: int = 22050, lead: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.concatenate([np.zeros(int(lead * sr)), wav]).astype(np.float32)


def write(path: Path, wav: np.ndarray, sr: int = 22050) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, subtype="PCM_16")


def make_ljspeech(root: Path, n: int = 6) -> Path:
    lines = []
    for i in range(n):
        uid = f"LJ001-{i + 1:04d}"
        write(root / "wavs" / f"{uid}.wav", tone(1.0 + 0.1 * i))
        lines.append(f"{uid}|RAW {i} text|{EN[i % len(EN)]}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def filelist_rows(path) -> list:
    return [line.split("|") for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_ljspeech_uses_the_normalized_column_and_relative_paths(tmp_path, capsys):
    src = make_ljspeech(tmp_path / "LJSpeech-1.1")
    out = tmp_path / "data"
    assert main(["--format", "ljspeech", "--input", str(src), "--out", str(out),
                 "--val_size", "2"]) == 0
    rows = filelist_rows(out / "train.txt") + filelist_rows(out / "val.txt")
    assert len(filelist_rows(out / "val.txt")) == 2
    assert sorted(text for _, text in rows) == sorted(EN)
    assert all(path.startswith("../LJSpeech-1.1/wavs/LJ001-") for path, _ in rows)
    entries = read_filelist(out / "train.txt")  # training reads them as written
    assert all(os.path.isfile(e.audio_path) for e in entries)
    printed = capsys.readouterr().out
    assert "lines read: 6; kept 6 (0.00 h); skipped 0" in printed
    assert "(4 lines); val:" in printed and not (out / "wavs").exists()


def test_split_is_seeded_disjoint_and_in_input_order():
    train, val = split_items(20, 5, seed=1)
    assert split_items(20, 5, seed=1) == (train, val)
    assert split_items(20, 5, seed=2) != (train, val)
    assert sorted(train + val) == list(range(20)) and val == sorted(val) and len(val) == 5
    assert len(split_items(100, 0.1, seed=0)[1]) == 10
    assert len(split_items(1000, None, seed=0)[1]) == 50  # default 5%
    assert len(split_items(5000, None, seed=0)[1]) == 100  # at most 100


@pytest.mark.parametrize("val_size, message", [
    (6, "--val_size 6: 6 usable utterance(s) cannot give 6 for validation"),
    (2.5, "--val_size 2.5: give a count of at least 1 or a fraction between 0 and 1"),
    (0, "--val_size 0: give a count of at least 1"),
])
def test_bad_val_size(val_size, message):
    with pytest.raises(PrepareError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_items(6, val_size, seed=0)


def test_ruslan_resample_writes_new_wavs_and_leaves_the_source(tmp_path, capsys):
    src = tmp_path / "RUSLAN_data"
    lines = []
    for i, text in enumerate(RU):
        uid = f"{i:06d}_RUSLAN"
        write(src / "RUSLAN" / f"{uid}.wav", tone(1.0, sr=44100), sr=44100)
        lines.append(f"{uid}|{text}")
    (src / "metadata_RUSLAN_22200.csv").write_text("\n".join(lines), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in (src / "RUSLAN").iterdir()}

    out = tmp_path / "skipped_run"
    with pytest.raises(PrepareError, match="no usable utterance .5 skipped: .*44100 Hz, "
                                           "expected 22050 Hz .add --resample."):
        prepare("ruslan", str(src), str(out), create_hparams(
            "text_cleaners=[russian_cleaners],symbol_set=russian"), val_size=1, progress=False)

    out = tmp_path / "data"
    assert main(["--format", "ruslan", "--input", str(src), "--out", str(out), "--val_size", "1",
                 "--resample"]) == 0
    assert "audio written: 5 (5 resampled)" in capsys.readouterr().out
    rows = filelist_rows(out / "train.txt") + filelist_rows(out / "val.txt")
    assert sorted(t for _, t in rows) == sorted(RU)
    for path, _ in rows:
        assert path.startswith("wavs/") and path.endswith("_RUSLAN.wav")
        info = sf.info(out / path)
        assert info.samplerate == 22050 and abs(info.duration - 1.0) < 1e-3
    assert {p.name: p.read_bytes() for p in (src / "RUSLAN").iterdir()} == before


def test_mailabs_reads_every_book(tmp_path):
    src = tmp_path / "en_US" / "by_book" / "female" / "judy"
    for b, book in enumerate(["oz", "emerald_city"]):
        lines = []
        for i in range(3):
            uid = f"{book}_{i:02d}"
            write(src / book / "wavs" / f"{uid}.wav", tone(1.0))
            lines.append(f"{uid}|raw {i}|{EN[3 * b + i]}")
        (src / book / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    result = prepare("mailabs", str(tmp_path / "en_US"), str(out), create_hparams(),
                     val_size=1, progress=False)
    rows = filelist_rows(result["train"]) + filelist_rows(result["val"])
    assert sorted(t for _, t in rows) == sorted(EN)
    assert {p.split("/")[-3] for p, _ in rows} == {"oz", "emerald_city"}
    assert (result["n_train"], result["n_val"]) == (5, 1)


def test_generic_skips_bad_lines_with_reasons(tmp_path, capsys):
    src = tmp_path / "corpus"
    for i in range(4):
        write(src / "audio" / f"u{i}.wav", tone(1.0))
    write(src / "other" / "u0.wav", tone(1.2))  # same stem as audio/u0.wav
    write(src / "audio" / "blip.wav", tone(0.1))
    write(src / "audio" / "endless.wav", tone(21.0))
    lines = ["audio/u0.wav|First line.", "audio/u1.wav|", "audio/gone.wav|Missing audio.",
             "audio/u2.wav|Odd # sign.", "audio/u3.wav", "other/u0.wav|Same name, other folder.",
             "audio/blip.wav|Too short.", "audio/endless.wav|Too long.",
             f"{src / 'audio' / 'u3.wav'}|An absolute path."]
    listing = src / "list.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    assert main(["--format", "generic", "--input", str(listing), "--out", str(out),
                 "--val_size", "1", "--trim_silence"]) == 0
    printed = capsys.readouterr().out
    assert "lines read: 9; kept 3 (0.00 h); skipped 6" in printed
    assert ("skipped: bad_line 1, empty_text 1, missing_audio 1, too_long 1, too_short 1, "
            "unknown_chars 1") in printed
    skipped = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert f"{listing}:2: empty_text: no text for u1" in skipped
    gone = src / "audio" / "gone.wav"
    assert f"{listing}:3: missing_audio: {gone}: no such audio file" in skipped
    assert any(s.startswith(f"{listing}:4: unknown_chars: character(s) '#' not in the 'english' "
                            f"set after ['english_cleaners']; cleaned: 'odd # sign.'")
               for s in skipped)
    assert f"{listing}:5: bad_line: expected 'path|text', found 1 field(s)" in skipped
    assert any(s.startswith(f"{listing}:7: too_short: ") and "< min_audio_seconds=0.3" in s
               for s in skipped)
    assert any(s.startswith(f"{listing}:8: too_long: ") and "> max_audio_seconds=20" in s
               for s in skipped)
    names = sorted(os.path.basename(p) for p, _ in
                   filelist_rows(out / "train.txt") + filelist_rows(out / "val.txt"))
    assert names == ["u0.wav", "u0_2.wav", "u3.wav"]  # written to wavs/, names kept apart


def test_trim_silence_and_mels(tmp_path):
    src = tmp_path / "c"
    write(src / "a.wav", tone(1.0, lead=0.5))
    write(src / "b.wav", tone(0.8, lead=0.5))
    (src / "list.txt").write_text("a.wav|Hello there.\nb.wav|Good night.\n", encoding="utf-8")
    hp = create_hparams()
    out = tmp_path / "data"
    result = prepare("generic", str(src / "list.txt"), str(out), hp, val_size=1, trim=True,
                     mels=True, progress=False)
    assert result["written"] == 2 and result["mels"] == 2
    new = sf.info(out / "wavs" / "a.wav")
    assert new.samplerate == 22050 and 0.95 < new.duration < 1.1  # 0.5 s lead cut
    mel = np.load(out / "mels" / "a.npy")
    assert mel.dtype == np.float32 and mel.shape[0] == hp.n_mel_channels
    assert np.allclose(mel, mel_from_file(out / "wavs" / "a.wav", hp).numpy())
    assert sf.info(src / "a.wav").duration == pytest.approx(1.5, abs=1e-3)  # source untouched


def test_in_place_overwrites_the_source(tmp_path):
    src = make_ljspeech(tmp_path / "lj", n=3)
    for wav in (src / "wavs").iterdir():
        write(wav, tone(1.0, sr=16000), sr=16000)
    result = prepare("ljspeech", str(src), str(tmp_path / "data"), create_hparams(), val_size=1,
                     resample=True, in_place=True, progress=False)
    assert result["resampled"] == 3 and not (tmp_path / "data" / "wavs").exists()
    assert {sf.info(w).samplerate for w in (src / "wavs").iterdir()} == {22050}
    assert sorted(os.listdir(src / "wavs")) == ["LJ001-0001.wav", "LJ001-0002.wav",
                                                "LJ001-0003.wav"]


def test_refuses_to_write_over_the_sources(tmp_path):
    src = make_ljspeech(tmp_path / "lj", n=3)
    with pytest.raises(PrepareError, match=r"lj/wavs: holds source audio and would be written "
                                           r"to; choose another --out"):
        prepare("ljspeech", str(src), str(src), create_hparams(), val_size=1, resample=True,
                progress=False)
    listing = tmp_path / "train.txt"
    listing.write_text("lj/wavs/LJ001-0001.wav|Hi there.\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="would be overwritten by the output filelist"):
        prepare("generic", str(listing), str(tmp_path), create_hparams(), progress=False)


@pytest.mark.parametrize("fmt, make, kwargs, message", [
    ("ljspeech", lambda p: p.mkdir(), {}, "metadata.csv: no such metadata file"),
    ("mailabs", lambda p: p.mkdir(), {}, "no metadata.csv below this folder"),
    ("mailabs", lambda p: p.mkdir(), {"wavs": "x"},
     "--metadata and --wavs do not apply to mailabs"),
    ("generic", lambda p: p.mkdir(), {}, "is a folder; --format generic takes a path|text list"),
    ("generic", lambda p: None, {}, "no such file or folder"),
    ("nonsense", lambda p: p.mkdir(), {}, "unknown format 'nonsense'"),
])
def test_input_errors(tmp_path, fmt, make, kwargs, message):
    make(tmp_path / "in")
    with pytest.raises(PrepareError, match=message.replace("|", r"\|").replace(".", r"\.")):
        prepare(fmt, str(tmp_path / "in"), str(tmp_path / "out"), create_hparams(),
                progress=False, **kwargs)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert main(["--format", "ljspeech", "--input", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such file or folder\n"


def test_jobs_give_the_same_filelists(tmp_path):
    src = make_ljspeech(tmp_path / "lj")
    one = prepare("ljspeech", str(src), str(tmp_path / "a"), create_hparams(), val_size=2,
                  progress=False)
    two = prepare("ljspeech", str(src), str(tmp_path / "b"), create_hparams(), val_size=2,
                  jobs=2, progress=False)
    for name in ("train", "val"):
        assert Path(one[name]).read_text() == Path(two[name]).read_text()


def test_language_default_follows_the_format(monkeypatch, tmp_path):
    seen = {}

    def fake_prepare(fmt, input_path, out_dir, hp, **kwargs):
        seen[fmt] = (hp.text_cleaners, hp.symbol_set)
        raise PrepareError("stop")

    monkeypatch.setattr(prepare_dataset, "prepare", fake_prepare)
    for fmt in ("ruslan", "generic"):
        assert main(["--format", fmt, "--input", "x", "--out", "y"]) == 1
    assert main(["--format", "mailabs", "--input", "x", "--out", "y", "--language", "ru"]) == 1
    assert seen == {"ruslan": (["russian_cleaners"], "russian"),
                    "generic": (["english_cleaners"], "english"),
                    "mailabs": (["russian_cleaners"], "russian")}


def test_ljspeech_bad_lines_and_bad_audio_are_skipped(tmp_path):
    src = make_ljspeech(tmp_path / "lj", n=3)
    (src / "wavs" / "junk.wav").write_bytes(b"RIFF but not really")
    write(src / "wavs" / "empty.wav", np.zeros(0, dtype=np.float32))
    with open(src / "metadata.csv", "ab") as f:
        f.write(b"junk|Junk.|Junk.\nempty|Empty.|Empty.\nonly_an_id\n\xff\xfe|x|y\n"
                b"two_columns|Raw text only.\n")
    write(src / "wavs" / "two_columns.wav", tone(1.0))
    result = prepare("ljspeech", str(src), str(tmp_path / "out"), create_hparams(), val_size=1,
                     progress=False)
    meta = str(src / "metadata.csv")
    got = {(s.line, s.reason): s.message for s in result["skipped"]}
    assert set(got) == {(4, "unreadable_audio"), (5, "empty_audio"), (6, "bad_line"),
                        (7, "bad_line")}
    assert "junk.wav: cannot read audio header" in got[(4, "unreadable_audio")]
    assert got[(5, "empty_audio")].endswith("empty.wav: the file holds no samples")
    assert got[(6, "bad_line")] == "expected 'id|text...', found 1 field(s)"
    assert got[(7, "bad_line")] == "not UTF-8 (invalid start byte at byte 0)"
    assert str(result["skipped"][0]).startswith(f"{meta}:4: unreadable_audio: ")
    texts = [t for _, t in filelist_rows(result["train"]) + filelist_rows(result["val"])]
    assert "Raw text only." in texts  # the raw column stands in for a missing normalized one
    assert result["lines"] == 8


def test_empty_metadata_and_misplaced_options(tmp_path):
    (tmp_path / "lj").mkdir()
    (tmp_path / "lj" / "metadata.csv").write_text("\n\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="no usable utterance .0 skipped: the metadata is empty"):
        prepare("ljspeech", str(tmp_path / "lj"), str(tmp_path / "o"), create_hparams(),
                progress=False)
    (tmp_path / "list.txt").write_text("a.wav|A.\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="--metadata and --wavs do not apply to generic"):
        prepare("generic", str(tmp_path / "list.txt"), str(tmp_path / "o"), create_hparams(),
                metadata="m.csv", progress=False)


# ---------------------------------------------------------------------------- festvox

FESTVOX = [("ru_0001", "Она завела, прядь волнистых вол+ос за ухо."),
           ("ru_0002", "+Окна домов, казались нежилыми."),
           ("ru_0003", "Со спокойным мужеством, Скайлс ждал."),
           ("ru_0004", "Нет такого файла."),
           ("ru_0005", "Он сказал: \\\"иди\\\", и ушёл.")]


def make_festvox(root: Path, sr: int = 16000, lines: list | None = None) -> Path:
    """A festvox voice folder: etc/txt.done.data and wav/<id>.wav (ru_0004's wav is missing)."""
    rng = np.random.default_rng(0)
    for i, (uid, _) in enumerate(FESTVOX):
        if uid != "ru_0004":
            noise = 0.05 * rng.standard_normal(int(0.2 * sr)).astype(np.float32)
            write(root / "wav" / f"{uid}.wav", np.concatenate([tone(1.0 + 0.1 * i, sr), noise]),
                  sr=sr)
    if lines is None:
        lines = [f'( {uid} "{text}" )' for uid, text in FESTVOX]
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "txt.done.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_festvox_reads_ids_and_stressed_text_and_resamples(tmp_path, capsys):
    src = make_festvox(tmp_path / "msu_ru_nsh_clunits")
    out = tmp_path / "data"
    assert main(["--format", "festvox", "--input", str(src), "--out", str(out),
                 "--language", "ru", "--resample", "--val_size", "1"]) == 0
    printed = capsys.readouterr().out
    assert "lines read: 5; kept 4" in printed and "skipped: missing_audio 1" in printed
    assert "audio written: 4 (4 resampled)" in printed
    rows = filelist_rows(out / "train.txt") + filelist_rows(out / "val.txt")
    by_path = dict(rows)
    assert sorted(by_path) == [f"wavs/ru_000{i}.wav" for i in (1, 2, 3, 5)]
    # the stress marks survive as written, and an escaped quote is a quote
    assert by_path["wavs/ru_0001.wav"] == "Она завела, прядь волнистых вол+ос за ухо."
    assert by_path["wavs/ru_0002.wav"] == "+Окна домов, казались нежилыми."
    assert by_path["wavs/ru_0005.wav"] == 'Он сказал: "иди", и ушёл.'
    for path in by_path:
        info = sf.info(out / path)
        assert info.samplerate == create_hparams().sampling_rate == 22050
    # 16 kHz -> 22050 Hz keeps the duration (ru_0003: 1.2 s of tone, 0.2 s of noise)
    assert sf.info(out / "wavs" / "ru_0003.wav").duration == pytest.approx(1.4, abs=2e-3)
    metadata = src / "etc" / "txt.done.data"
    gone = src / "wav" / "ru_0004.wav"
    skipped = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert skipped == [f"{metadata}:4: missing_audio: {gone}: no such audio file"]


def test_festvox_russian_cleaners_keep_the_stress_mark():
    from text import clean_text, text_to_sequence, sequence_to_text

    cleaned = clean_text(FESTVOX[1][1], ["russian_cleaners"])
    assert cleaned == "+окна домов, казались нежилыми."
    sequence = text_to_sequence(FESTVOX[0][1], ["russian_cleaners"], "russian")
    assert "вол+ос" in sequence_to_text(sequence, "russian")


def test_festvox_trim_and_a_16k_sampling_rate(tmp_path):
    src = make_festvox(tmp_path / "voice")
    for uid in ("ru_0001", "ru_0002"):  # half a second of silence in front
        wav, sr = sf.read(src / "wav" / f"{uid}.wav", dtype="float32")
        write(src / "wav" / f"{uid}.wav", np.concatenate([np.zeros(8000, np.float32), wav]),
              sr=sr)
    hp = create_hparams("sampling_rate=16000,text_cleaners=[russian_cleaners],"
                        "symbol_set=russian")
    result = prepare("festvox", str(src), str(tmp_path / "data"), hp, val_size=1, trim=True,
                     progress=False)
    assert result["resampled"] == 0 and result["written"] == 4
    first = sf.info(tmp_path / "data" / "wavs" / "ru_0001.wav")
    assert first.samplerate == 16000 and 1.1 < first.duration < 1.3  # 1.7 s before


def test_festvox_english_set_skips_the_stress_mark(tmp_path):
    src = make_festvox(tmp_path / "voice", sr=22050)
    result = prepare("festvox", str(src), str(tmp_path / "data"), create_hparams(), val_size=1,
                     progress=False)
    # english_cleaners transliterate Cyrillic to ASCII, but '+' is not an English symbol:
    # --language ru is what keeps these lines
    reasons = {s.line: (s.reason, s.message) for s in result["skipped"]}
    assert sorted(reasons) == [1, 2, 4]
    for line in (1, 2):
        assert reasons[line][0] == "unknown_chars"
        assert reasons[line][1].startswith("character(s) '+' not in the 'english' set")


@pytest.mark.parametrize("bad, number", [
    ('( ru_0002 "no closing quote )', 2),
    ('ru_0002 "no brackets"', 2),
    ('( ru_0002 )', 2),
    ('( ru_0002 "two" "texts" )', 2),
])
def test_festvox_malformed_line_is_an_error_naming_file_and_line(tmp_path, capsys, bad, number):
    lines = [f'( {uid} "{text}" )' for uid, text in FESTVOX]
    lines[number - 1] = bad
    src = make_festvox(tmp_path / "voice", lines=lines)
    metadata = src / "etc" / "txt.done.data"
    assert main(["--format", "festvox", "--input", str(src), "--out", str(tmp_path / "o"),
                 "--language", "ru", "--resample"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {metadata}:{number}: malformed line, expected "
                          f"'( id \"text\" )', found ")
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_festvox_blank_lines_count_and_input_errors(tmp_path):
    lines = ["", f'( {FESTVOX[0][0]} "{FESTVOX[0][1]}" )', "   ", "( bad"]
    src = make_festvox(tmp_path / "voice", lines=lines)
    with pytest.raises(PrepareError, match=r"txt\.done\.data:4: malformed line"):
        prepare("festvox", str(src), str(tmp_path / "o"), create_hparams(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=r"empty/etc/txt\.done\.data: no such prompt file"):
        prepare("festvox", str(tmp_path / "empty"), str(tmp_path / "o"), create_hparams(),
                progress=False)
    (tmp_path / "list.txt").write_text("x", encoding="utf-8")
    with pytest.raises(PrepareError, match="is not a folder; --format festvox takes a voice"):
        prepare("festvox", str(tmp_path / "list.txt"), str(tmp_path / "o"), create_hparams(),
                progress=False)
    (src / "etc" / "txt.done.data").write_bytes(b'( ru_0001 "\xff" )\n')
    with pytest.raises(PrepareError, match=r"txt\.done\.data:1: not UTF-8"):
        prepare("festvox", str(src), str(tmp_path / "o"), create_hparams(), progress=False)
