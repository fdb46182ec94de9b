"""The shipped demo corpus: every filelist line is usable, and the generator is reproducible."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from check_data import check_filelists
from data_utils import read_filelist
from hparams import create_hparams
from text import text_to_sequence, unknown_characters

ROOT = Path(__file__).resolve().parent.parent
LANGS = {"en": (["english_cleaners"], "english", "demo"),
         "ru": (["russian_cleaners"], "russian", "demo_ru")}


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_corpus",
                                                  ROOT / "scripts" / "make_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries(lang):
    return [e for split in ("train", "val")
            for e in read_filelist(ROOT / "filelists" / f"demo_{lang}_{split}.txt")]


@pytest.mark.parametrize("lang", sorted(LANGS))
def test_every_entry_is_22050_hz_mono_with_clean_text(lang):
    cleaners, symbol_set, _ = LANGS[lang]
    entries = _entries(lang)
    assert len(entries) >= (200 if lang == "en" else 120)
    for e in entries:
        info = sf.info(e.audio_path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16"), e
        assert 1.0 < info.duration < 8.0, e
        assert unknown_characters(e.text, cleaners, symbol_set) == [], e
        assert len(text_to_sequence(e.text, cleaners, symbol_set)) > 10
        assert not any(ch.isdigit() for ch in e.text), e  # numbers are spelled out


@pytest.mark.parametrize("lang", sorted(LANGS))
def test_filelists_are_relative_disjoint_and_cover_the_corpus(lang):
    lines = {}
    for split in ("train", "val"):
        text = (ROOT / "filelists" / f"demo_{lang}_{split}.txt").read_text(encoding="utf-8")
        lines[split] = [line.split("|")[0] for line in text.splitlines()]
    both = lines["train"] + lines["val"]
    assert all(p.startswith(f"../demo_corpus/{lang}/{lang}_") for p in both)
    assert 10 <= len(lines["val"]) <= 16
    assert not set(lines["train"]) & set(lines["val"])
    on_disk = sorted(f"../demo_corpus/{lang}/{p.name}"
                     for p in (ROOT / "demo_corpus" / lang).iterdir())
    assert sorted(both) == on_disk


@pytest.mark.parametrize("lang", sorted(LANGS))
def test_check_data_finds_nothing_in_the_demo_corpus(lang):
    _, _, preset = LANGS[lang]
    hp = create_hparams(f"preset={preset}")
    problems = check_filelists(str(ROOT / "filelists" / f"demo_{lang}_train.txt"),
                               str(ROOT / "filelists" / f"demo_{lang}_val.txt"), hp,
                               decode_audio=True)
    assert [str(p) for p in problems] == []


def test_preset_filelists_are_the_demo_ones():
    assert create_hparams("preset=demo").training_files == "filelists/demo_en_train.txt"
    assert create_hparams("preset=demo_ru").validation_files == "filelists/demo_ru_val.txt"


def test_corpus_is_small_and_edges_are_short():
    files = list((ROOT / "demo_corpus").rglob("*.flac"))
    assert sum(f.stat().st_size for f in files) < 25 * 1024 * 1024
    for path in files[::40]:
        wav, sr = sf.read(path)
        loud = np.nonzero(np.abs(wav) > 1e-3)[0]
        # 0.1 s of silence at each end (espeak-ng's own onset may add a few ms)
        assert 0.1 <= loud[0] / sr < 0.13, path
        assert 0.1 <= (len(wav) - loud[-1]) / sr < 0.13, path
        assert 0.5 < np.abs(wav).max() < 0.9, path


def test_fix_edges_pads_exactly_and_normalises():
    gen = _load_generator()
    speech = np.full(1000, 0.2, dtype=np.float32)
    wav = np.concatenate([np.zeros(5000), speech, np.zeros(300)]).astype(np.float32)
    out = gen.fix_edges(wav)
    pad = int(round(gen.EDGE_SILENCE_S * gen.SAMPLING_RATE))
    assert len(out) == 2 * pad + 1000
    assert np.all(out[:pad] == 0) and np.all(out[-pad:] == 0)
    assert np.allclose(out[pad:pad + 1000], gen.PEAK)
    with pytest.raises(ValueError, match="espeak-ng produced silence"):
        gen.fix_edges(np.zeros(100, dtype=np.float32))


@pytest.mark.parametrize("bad", ["It costs 5 pounds.", "A|B", "stress on the vow+el"])
def test_sentences_with_digits_pipes_or_plus_are_refused(tmp_path, bad):
    gen = _load_generator()
    path = tmp_path / "s.txt"
    path.write_text(f"# a comment\nA fine sentence.\n{bad}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.txt: sentence 2 has '\|', '\+' or a digit"):
        gen.read_sentences(path)


def test_plan_is_seeded_and_per_language():
    gen = _load_generator()
    a = gen.utterance_plan("en", 50, 1234, 12)
    b = gen.utterance_plan("en", 50, 1234, 12)
    c = gen.utterance_plan("ru", 50, 1234, 12)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2] and len(a[2]) == 12
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= 145 and a[0].max() <= 175 and len(set(a[0].tolist())) > 5


def _espeak_version() -> str:
    if shutil.which("espeak-ng") is None:
        return ""
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout


@pytest.mark.skipif("1.51" not in _espeak_version(),
                    reason="needs espeak-ng 1.51, the version that made the corpus")
@pytest.mark.parametrize("lang", sorted(LANGS))
def test_generator_reproduces_the_shipped_audio(tmp_path, lang):
    gen = _load_generator()
    sentences = gen.read_sentences(ROOT / "scripts" / f"demo_sentences_{lang}.txt")
    rates, pitches, _ = gen.utterance_plan(lang, len(sentences), 1234, 12)
    wav = gen.fix_edges(gen.synthesize(sentences[0], gen.VOICES[lang], int(rates[0]),
                                       int(pitches[0]), str(tmp_path)))
    sf.write(tmp_path / "x.flac", wav, 22050, subtype="PCM_16")
    mine, _ = sf.read(tmp_path / "x.flac", dtype="int16")
    shipped, _ = sf.read(ROOT / "demo_corpus" / lang / f"{lang}_0001.flac", dtype="int16")
    assert np.array_equal(mine, shipped)


@pytest.mark.parametrize("lang", sorted(LANGS))
def test_a_swapped_transcript_in_the_demo_corpus_is_flagged(tmp_path, lang):
    _, _, preset = LANGS[lang]
    entries = _entries(lang)
    chars = [len(e.text) for e in entries]
    short, long_ = int(np.argmin(chars)), int(np.argmax(chars))
    texts = [e.text for e in entries]
    texts[short], texts[long_] = texts[long_], texts[short]
    path = tmp_path / "swapped.txt"
    path.write_text("".join(f"{e.audio_path}|{t}\n" for e, t in zip(entries, texts)),
                    encoding="utf-8")
    problems = check_filelists(str(path), None, create_hparams(f"preset={preset}"),
                               decode_audio=False)
    assert sorted((p.line, p.kind) for p in problems) == sorted(
        [(short + 1, "rate_outlier"), (long_ + 1, "rate_outlier")])
