"""quality.py: MCD-DTW and its references, the word error rate, the JSON result."""
import json
import math
import os
import sys

import numpy as np
import pytest

import quality
from hparams import create_hparams
from quality import (MCD_DB, QualityError, QualityResult, evaluate_quality, flat_mel, mcd_dtw,
                     mcd_dtw_batch, mcd_references, mel_of_wav, normalize_transcript)

SR = 22050
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def speechlike(seed: int, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    """Voiced 80 ms segments: harmonics of a random pitch under random formant peaks, so each
    segment has its own spectral envelope (what the cepstrum describes)."""
    rng = np.random.default_rng(seed)
    step = int(0.08 * sr)
    t = np.arange(step) / sr
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    parts = []
    for _ in range(int(seconds / 0.08)):
        f0 = rng.uniform(90.0, 220.0)
        formants = rng.uniform([300.0, 900.0, 2200.0], [900.0, 2200.0, 3500.0])
        harmonics = np.arange(1, int(7000 / f0))
        gain = sum(np.exp(-((harmonics * f0 - f) / 150.0) ** 2) for f in formants) + 0.02
        wave = (gain[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t)).sum(axis=0)
        parts.append(rng.uniform(0.2, 1.0) * wave * fade)
    wav = np.concatenate(parts)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def hp():
    return create_hparams("")


@pytest.fixture(scope="module")
def mels(hp):
    """Log-mels (80, 83) of three different generated utterances."""
    return [mel_of_wav(speechlike(seed), hp) for seed in range(3)]


def test_mel_with_itself_scores_zero(mels):
    assert mcd_dtw(mels[0], mels[0]) == 0.0


def test_mcd_grows_with_noise(mels):
    noise = np.random.default_rng(0).standard_normal(mels[0].shape)
    scores = [mcd_dtw(mels[0] + sigma * noise, mels[0]) for sigma in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert scores[0] > 0.0


def test_mcd_is_kubichek_db_of_the_natural_log_cepstrum(mels):
    # ln-mel + 2 a cos(pi d (2k + 1) / 2M) shifts cepstral coefficient c_d by exactly a, so the
    # MCD is 10 / ln(10) * sqrt(2) * a; a level change (c0) is not distortion.
    n_mel = mels[0].shape[0]
    a = 0.3
    ripple = 2 * a * np.cos(np.pi * 3 * (2 * np.arange(n_mel) + 1) / (2 * n_mel))[:, None]
    assert mcd_dtw(mels[0] + ripple, mels[0]) == pytest.approx(MCD_DB * a, rel=1e-6)
    assert MCD_DB * a == pytest.approx(10 / math.log(10) * math.sqrt(2) * 0.3)
    assert mcd_dtw(mels[0] + 1.7, mels[0]) == pytest.approx(0.0, abs=1e-5)  # float32 mel
    # coefficients beyond K do not count
    high = 2 * a * np.cos(np.pi * 20 * (2 * np.arange(n_mel) + 1) / (2 * n_mel))[:, None]
    assert mcd_dtw(mels[0] + high, mels[0], n_coefficients=13) == pytest.approx(0.0, abs=1e-5)
    assert mcd_dtw(mels[0] + high, mels[0], n_coefficients=20) == pytest.approx(MCD_DB * a)
    # with every coefficient: 10 / ln(10) x the RMS over bands of the level-free ln difference,
    # i.e. half its RMS in (20 log10) dB
    delta = np.random.default_rng(3).normal(0.0, 0.2, (n_mel, 1))
    rms_db = np.sqrt(np.mean((20 / math.log(10) * (delta - delta.mean())) ** 2))
    assert mcd_dtw(mels[0] + delta, mels[0], n_coefficients=n_mel) == pytest.approx(rms_db / 2)


def test_dtw_aligns_a_time_stretched_mel(mels):
    stretched = np.repeat(mels[0], 2, axis=1)  # (80, 87) -> (80, 174): half the speed
    uneven = np.repeat(mels[0], np.arange(mels[0].shape[1]) % 3 + 1, axis=1)
    different = mcd_dtw(mels[1], mels[0])
    assert mcd_dtw(stretched, mels[0]) == pytest.approx(0.0, abs=1e-5)
    assert mcd_dtw(mels[0], uneven) == pytest.approx(0.0, abs=1e-5)
    assert different > 1.0
    # a stretched copy with a little noise stays far below another utterance
    noisy = stretched + 0.1 * np.random.default_rng(1).standard_normal(stretched.shape)
    assert mcd_dtw(noisy, mels[0]) < 0.3 * different


def test_flat_reference_is_worse_than_a_slightly_noisy_copy(mels):
    flat = flat_mel(mels[0])
    assert flat.shape == mels[0].shape
    assert np.allclose(flat[:, 0], mels[0].mean(axis=1))
    noisy = mels[0] + 0.1 * np.random.default_rng(2).standard_normal(mels[0].shape)
    assert mcd_dtw(flat, mels[0]) > 3 * mcd_dtw(noisy, mels[0])


def test_batch_gives_items_and_mean(mels):
    values, mean = mcd_dtw_batch([mels[0], mels[1], mels[2]], [mels[0], mels[0], mels[0]])
    assert values[0] == 0.0 and values[1] > 0 and values[2] > 0
    assert mean == pytest.approx(np.mean(values))


@pytest.mark.parametrize("predicted,reference,message", [
    (np.zeros((80,)), np.zeros((80, 4)), r"predicted mel: expected a \(n_mel >= 2, frames >= 1\)"),
    (np.zeros((80, 4)), np.full((80, 4), np.nan), "reference mel: the mel holds NaN or inf"),
    (np.zeros((80, 4)), np.zeros((20, 4)), "mel bands differ: predicted 80, reference 20"),
])
def test_bad_mels_are_named(predicted, reference, message):
    with pytest.raises(QualityError, match=message):
        mcd_dtw(predicted, reference)


def test_batch_counts_must_match(mels):
    with pytest.raises(QualityError, match="1 predicted mels for 2 reference mels"):
        mcd_dtw_batch([mels[0]], mels[:2])


def test_references_order_self_griffin_lim_flat(hp, mels):
    refs = mcd_references(mels[:2], hp, griffin_lim_iters=16, max_items=1)
    assert refs["self_mcd"] == 0.0
    assert 0.0 < refs["griffin_lim_mcd"] < refs["flat_mcd"]
    assert refs["flat_mcd"] == pytest.approx(mcd_dtw_batch([flat_mel(m) for m in mels[:2]],
                                                           mels[:2])[1])
    assert (refs["items"], refs["griffin_lim_items"], refs["griffin_lim_iters"]) == (2, 1, 16)
    assert refs["griffin_lim_wer"] is None  # no transcripts
    none = mcd_references(mels[:1], hp, max_items=0)
    assert none["griffin_lim_mcd"] is None and none["griffin_lim_items"] == 0
    with pytest.raises(QualityError, match="mcd_references: 1 transcripts for 2 mels"):
        mcd_references(mels[:2], hp, transcripts=["one"])
    with pytest.raises(QualityError, match="evaluate_quality: 1 transcripts for 2 mels"):
        evaluate_quality(mels[:2], mels[:2], hp, transcripts=["one"])
    with pytest.raises(QualityError, match="mcd_references: no reference mels"):
        mcd_references([], hp)


def test_result_round_trips_through_json(hp, mels):
    refs = {"self_mcd": 0.0, "griffin_lim_mcd": 1.5, "flat_mcd": 6.0, "griffin_lim_wer": None,
            "items": 2, "griffin_lim_items": 1, "griffin_lim_iters": 16}
    result = evaluate_quality(mels[1:3], mels[:2], hp, references=refs)
    assert result.wer is None and result.wer_notice is None  # no transcripts: no WER asked
    assert result.mean_mcd == pytest.approx(np.mean(result.mcd))
    line = json.dumps({"step": 200, "quality": result.to_dict()})
    back = QualityResult.from_dict(json.loads(line)["quality"])
    assert back == result
    assert result.n_coefficients == 13
    few_bands = [m[:8] for m in mels[:1]]  # K is clipped to n_mel - 1
    assert evaluate_quality(few_bands, few_bands, hp).n_coefficients == 7


@pytest.mark.parametrize("values,message", [
    ({"mcd": [1.0], "mean_mcd": 1.0, "mcd_db": 2}, "unknown key"),
    ({"mcd": [1.0]}, "missing mean_mcd"),
])
def test_result_from_dict_rejects_bad_keys(values, message):
    with pytest.raises(QualityError, match=f"quality result: {message}"):
        QualityResult.from_dict(values)


@pytest.mark.parametrize("text,expected", [
    ("Hello, World!", "hello world"),
    ("Don't   stop -- the 'quick' fox.", "dont stop the quick fox"),
    ("twenty-five\tdollars", "twenty five dollars"),
    ("?!", ""),
])
def test_normalize_transcript(text, expected):
    assert normalize_transcript(text) == expected


def test_without_recognizer_wer_is_none_with_a_notice(monkeypatch, hp, mels):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import now raises ImportError
    assert quality.wer_available() == quality.WER_NOTICE
    assert quality.word_error_rate([np.zeros(SR)], ["hello"], SR) is None
    result = evaluate_quality(mels[:1], mels[:1], hp, transcripts=["hello"])
    assert result.wer is None and result.wer_notice == quality.WER_NOTICE
    assert mcd_references(mels[:1], hp, griffin_lim_iters=2, transcripts=["hello"]
                          )["griffin_lim_wer"] is None
    with pytest.raises(QualityError, match="pocketsphinx/jiwer not installed"):
        quality.recognize(np.zeros(SR), SR)


def test_word_error_rate_counts_words_after_normalizing(monkeypatch):
    pytest.importorskip("jiwer")
    pytest.importorskip("pocketsphinx")
    heard = iter(["hello world", "the cat sat", ""])
    monkeypatch.setattr(quality, "recognize", lambda wav, sr: next(heard))
    result = quality.word_error_rate([np.zeros(10)] * 3, ["Hello, world!", "The dog sat.",
                                                          "Two words"], SR)
    assert result.item_wer == [0.0, pytest.approx(1 / 3), 1.0]
    assert result.wer == pytest.approx(3 / 7)  # all errors over all reference words
    with pytest.raises(QualityError, match=r"transcript 1 \('\.\.\.'\) has no word"):
        quality.word_error_rate([np.zeros(10)], ["..."], SR)
    with pytest.raises(QualityError, match="1 clips for 2 transcripts"):
        quality.word_error_rate([np.zeros(10)], ["a", "b"], SR)


def test_recognizer_hears_speech_better_than_noise():
    pytest.importorskip("jiwer")
    pytest.importorskip("pocketsphinx")
    import soundfile as sf

    # en_0021: the espeak-ng demo sentence pocketsphinx recognises best (WER 0.4; most of the
    # demo voice scores 0.6-1.0 with the en-us model)
    wav, sr = sf.read(os.path.join(ROOT, "demo_corpus", "en", "en_0021.flac"), dtype="float32")
    text = "Stars seem brighter when you are far from the city."
    noise = 0.1 * np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32)
    alone = quality.recognize(wav, sr)
    result = quality.word_error_rate([noise, np.zeros(sr // 2, np.float32), wav], [text] * 3, sr)
    assert isinstance(result.wer, float)
    assert result.hypotheses[2] == alone  # heard the same after other clips
    assert result.item_wer[2] <= 0.6
    assert min(result.item_wer[:2]) >= 0.8


def _bench():
    """bench/quality.py as a module (its name clashes with the root quality.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_quality", os.path.join(ROOT, "bench", "quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from checkpoint import save_checkpoint
    from model import Tacotron2

    hp = create_hparams("preset=tiny,max_decoder_steps=30")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "checkpoint_10"
    return save_checkpoint(str(path), model=Tacotron2(hp), optimizer=None, hp=hp, step=10)


def test_bench_scores_recording_griffin_lim_and_model(tiny_checkpoint, make_corpus, tmp_path,
                                                      capsys):
    corpus = make_corpus(tmp_path, 2, texts=["A very fine book.", "He said no!"])
    png = tmp_path / "mels.png"
    assert _bench().main([tiny_checkpoint, str(corpus.filelist), "--max_items", "1",
                          "--griffin_lim_iters", "4", "--out", str(png), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert lines[0].startswith(f"{tiny_checkpoint} (step 10)") and out["items"] == 1
    item = out["per_item"][0]
    assert item["recording_mcd"] == 0.0 and item["model_frames"] == 30 and item["hit_max_steps"]
    assert 0.0 < item["griffin_lim_mcd"] < item["model_mcd"]
    assert QualityResult.from_dict(out["quality"]).mcd == [item["model_mcd"]]
    assert png.stat().st_size > 0 and out["png"] == str(png)
    if quality.wer_available() is None:
        assert item["model_heard"] is not None and out["overall"]["model"]["wer"] >= 0.0


@pytest.mark.parametrize("what", ["checkpoint", "filelist"])
def test_bench_errors_are_one_line(what, tiny_checkpoint, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    args = ([missing, os.path.join(ROOT, "filelists", "demo_en_val.txt")] if what == "checkpoint"
            else [tiny_checkpoint, missing])
    assert _bench().main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quality.py: error: {missing}: no such {what}")
    assert err.count("\n") == 1


def test_validation_quality_of_another_language_says_why_wer_is_missing(hp, mels):
    from types import SimpleNamespace

    from validation import ItemAttention, score_quality
    items = [ItemAttention(index=i, mel_length=m.shape[1], teacher=None, free=None,
                           free_hit_max=False, free_mel=m + 0.1, mel=m)
             for i, m in enumerate(mels[:2])]
    free = SimpleNamespace(items=items, runs_on=[False, False], reading_steps=[0, 0])
    val_set = SimpleNamespace(entries=[SimpleNamespace(text="привет, мир.")] * 2)
    russian = hp.replace(symbol_set="russian", text_cleaners=["russian_cleaners"],
                         quality_items=2)
    result = score_quality(free, val_set, russian, references=None)
    assert result.wer is None and len(result.mcd) == 2 and result.mean_mcd > 0
    assert result.wer_notice == ("word error rate: English voices only (symbol_set=russian); "
                                 "MCD only")
