"""Speech-quality scores: how close synthesized speech is to the recording of the same text.

Aligned is not yet speech: a model can read every token in order and still mumble. Two scores,
both from NumPy arrays and hparams (nothing here touches a model or a file):

* MCD-DTW, any language: mel-cepstral distortion in dB between the synthesized log-mel and the
  recording's, averaged along a dynamic-time-warping path, so that a different length or pace
  is not counted as distortion.
* WER, English only and optional: the mel is made audible with Griffin-Lim, recognised by
  pocketsphinx's en-us model (it ships inside the pip package) and scored against the
  transcript with jiwer. Without pocketsphinx or jiwer the WER is None and `wer_available()`
  returns the one-line notice.

A number alone means little, so `mcd_references` measures the scale on the same recordings:
0 for the recording against itself, the Griffin-Lim ceiling (the recording's own mel through
Griffin-Lim and back: the best a Griffin-Lim voice can score) and the hum (the recording's mean
log-mel at every frame: a model that learned the average spectrum and nothing else). On 20
LJSpeech utterances (default hparams, Griffin-Lim 60 iterations) the ceiling is 0.43 dB and the
hum 4.67 dB; pocketsphinx hears the recordings at 22% WER and their Griffin-Lim at 21% (it is
deaf to Griffin-Lim's phasiness), and the espeak-ng demo voice at 60-100%. These MCDs are not
comparable with papers' MCDs of WORLD/SPTK mel-cepstra: compare with the references instead.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from alignment_metrics import to_numpy
from audio import griffin_lim, stft_for

# c1..c13, as in MFCCs: the spectral envelope (formants). Higher coefficients of an 80-band mel
# resolve the low harmonics, i.e. the pitch, which a synthetic voice may rightly choose otherwise.
DEFAULT_MCD_COEFFICIENTS = 13
# Kubichek's constant: MCD = 10 / ln(10) * sqrt(2 * sum_d (c_d - c'_d)^2), d = 1..K.
MCD_DB = 10.0 / math.log(10.0) * math.sqrt(2.0)
RECOGNIZER_SAMPLE_RATE = 16000  # what pocketsphinx's en-us model was trained on
DEFAULT_REFERENCE_ITEMS = 4  # recordings put through Griffin-Lim by `mcd_references`
WER_NOTICE = ("word error rate: pocketsphinx/jiwer not installed (pip install pocketsphinx "
              "jiwer); MCD only")

# an apostrophe inside a word is dropped ("don't" -> "dont") on both sides of the comparison
_apostrophe_re = re.compile(r"['\u2019]")
# any run of characters that is not a letter or a digit separates words
_non_word_re = re.compile(r"[\W_]+")


class QualityError(ValueError):
    """Bad input to a quality score: a mel of the wrong shape, NaN or inf, an empty transcript."""


# --------------------------------------------------------------------------------------- MCD
def _check_mel(mel: Any, what: str) -> np.ndarray:
    mel = to_numpy(mel, np.float64)
    if mel.ndim != 2 or mel.shape[0] < 2 or mel.shape[1] < 1:
        raise QualityError(f"{what}: expected a (n_mel >= 2, frames >= 1) log-mel, "
                           f"got shape {mel.shape}")
    if not np.isfinite(mel).all():
        raise QualityError(f"{what}: the mel holds NaN or inf")
    return mel


def cepstral_order(n_coefficients: int, n_mel: int) -> int:
    """K in use: `n_coefficients` clipped to 1..n_mel - 1 (tiny test mels have few bands)."""
    return max(1, min(int(n_coefficients), n_mel - 1))


def mel_cepstrum(mel: Any, n_coefficients: int = DEFAULT_MCD_COEFFICIENTS) -> np.ndarray:
    """Mel cepstrum c1..cK of a natural-log mel, scaled as the MCD constant assumes.

    The cepstrum of a log spectrum L(w) = c0 + 2 sum_d c_d cos(d w) is taken over the mel axis
    with scipy's orthonormal DCT-II; on M bands that gives sqrt(2 M) c_d, so it is divided by
    sqrt(2 M). c0 (the overall level) is left out.

    Args:
        mel: (n_mel, frames) log-mel.
        n_coefficients: K; clipped to n_mel - 1.

    Returns:
        float64 (K, frames).
    """
    from scipy.fft import dct

    mel = np.asarray(mel, dtype=np.float64)
    n_mel = mel.shape[0]
    k = cepstral_order(n_coefficients, n_mel)
    cepstrum = dct(mel, type=2, norm="ortho", axis=0)  # (n_mel, frames)
    return cepstrum[1:k + 1] / math.sqrt(2.0 * n_mel)


def mcd_dtw(predicted_mel: Any, reference_mel: Any,
            n_coefficients: int = DEFAULT_MCD_COEFFICIENTS) -> float:
    """Mel-cepstral distortion in dB along the DTW path between two log-mels.

    Per frame pair, MCD = 10 / ln(10) * sqrt(2 * sum_{d=1..K} (c_d - c'_d)^2) (Kubichek 1993).
    That constant assumes cepstra of the natural log of the magnitude spectrum, which is what
    this project's mels are (audio.py: ln of the mel magnitude, power 1, clamped at 1e-5): no
    change of log base is needed (a ln-power mel would need its values halved first). With all
    coefficients it equals 10 / ln(10) times the RMS over the mel bands of the difference of the
    two ln-mels, once their mean level is removed: 1 dB of MCD is 2 dB RMS between the
    level-free spectra, here smoothed to their first K cosines. The frames are matched by
    librosa.sequence.dtw on the Euclidean cepstral distance (steps (1,1), (1,0), (0,1)), and the
    per-pair MCD is averaged over the path. Silent frames count too: the clamp bounds how far
    apart two silences can be.

    Args:
        predicted_mel: (n_mel, T1) log-mel (the model's postnet mel); ndarray or tensor.
        reference_mel: (n_mel, T2) log-mel of the recording.
        n_coefficients: K, see `mel_cepstrum`.

    Returns:
        MCD in dB, >= 0; 0 for identical mels.

    Raises:
        QualityError: a mel that is not 2-D, band counts that differ, NaN or inf.
    """
    import librosa.sequence  # a second to import; the diagnostics that import this rarely need it
    from scipy.spatial.distance import cdist

    predicted = _check_mel(predicted_mel, "predicted mel")
    reference = _check_mel(reference_mel, "reference mel")
    if predicted.shape[0] != reference.shape[0]:
        raise QualityError(f"mel bands differ: predicted {predicted.shape[0]}, reference "
                           f"{reference.shape[0]}")
    # (K, T) -> (T, K) rows for cdist -> (T1, T2) distances
    cost = cdist(mel_cepstrum(predicted, n_coefficients).T,
                 mel_cepstrum(reference, n_coefficients).T)
    _, path = librosa.sequence.dtw(C=cost, backtrack=True)  # (steps, 2) index pairs
    return float(MCD_DB * cost[path[:, 0], path[:, 1]].mean())


def mcd_dtw_batch(predicted_mels: Sequence[Any], reference_mels: Sequence[Any],
                  n_coefficients: int = DEFAULT_MCD_COEFFICIENTS) -> Tuple[List[float], float]:
    """`mcd_dtw` of each pair (mels of any lengths).

    Returns:
        (per-item MCD in dB, their mean).
    """
    if len(predicted_mels) != len(reference_mels) or len(predicted_mels) == 0:
        raise QualityError(f"{len(predicted_mels)} predicted mels for {len(reference_mels)} "
                           f"reference mels; give the same number, at least one")
    values = [mcd_dtw(p, r, n_coefficients) for p, r in zip(predicted_mels, reference_mels)]
    return values, float(np.mean(values))


def flat_mel(mel: Any) -> np.ndarray:
    """The hum: the mel's mean log-mel (over time) at every one of its frames, (n_mel, frames)."""
    mel = _check_mel(mel, "mel")
    return np.repeat(mel.mean(axis=1, keepdims=True), mel.shape[1], axis=1)


def mel_of_wav(wav: np.ndarray, hp) -> np.ndarray:
    """This project's log-mel of a waveform at hp.sampling_rate, (n_mel, 1 + samples // hop).

    A clip too short for the STFT's reflect padding is padded with silence.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    frames = 1 + len(wav) // hp.hop_length
    wav = np.pad(wav, (0, max(0, hp.filter_length // 2 + 1 - len(wav))))
    mel = stft_for(hp).mel_spectrogram(torch.from_numpy(wav).unsqueeze(0))  # (1, n_mel, T)
    return mel[0, :, :frames].numpy()


def resynthesize(mel: Any, hp, griffin_lim_iters: int) -> Tuple[np.ndarray, np.ndarray]:
    """A mel through Griffin-Lim and back: what a Griffin-Lim voice makes of it.

    Returns:
        (float32 audio (samples,) at hp.sampling_rate, its log-mel (n_mel, frames)).
    """
    wav = griffin_lim(_check_mel(mel, "mel"), hp, n_iters=griffin_lim_iters)
    return wav, mel_of_wav(wav, hp)


# --------------------------------------------------------------------------------------- WER
class WerResult(NamedTuple):
    wer: float  # all items together: (substitutions + deletions + insertions) / reference words
    item_wer: List[float]  # per item; above 1 when the recogniser inserts words
    hypotheses: List[str]  # what was recognised, normalized
    references: List[str]  # the transcripts, normalized


def wer_available() -> Optional[str]:
    """None when pocketsphinx and jiwer import; else the one-line `WER_NOTICE`."""
    try:
        import jiwer  # noqa: F401
        import pocketsphinx  # noqa: F401
    except ImportError:
        return WER_NOTICE
    return None


def wer_notice_for(symbol_set: str) -> Optional[str]:
    """Why a voice of `symbol_set` gets no word error rate (the recogniser is English only and
    optional), as one line; None when it gets one."""
    if symbol_set != "english":
        return f"word error rate: English voices only (symbol_set={symbol_set}); MCD only"
    return wer_available()


def normalize_transcript(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation as spaces, single spaces.

    Both the transcript and the recogniser's output go through it. Numbers are not spelled out:
    give the spoken form (the text after the English cleaners).
    """
    text = _apostrophe_re.sub("", text.lower())
    return " ".join(_non_word_re.sub(" ", text).split())


@functools.lru_cache(maxsize=1)
def _decoder() -> Tuple[Any, str]:
    # Loading the en-us model takes about half a second: once per process.
    from pocketsphinx import Decoder

    decoder = Decoder()
    return decoder, decoder.get_cmn()


def recognize(wav: np.ndarray, sample_rate: int) -> str:
    """English speech to text with pocketsphinx's bundled en-us model (about 0.3 s per second
    of audio on one CPU core).

    The cepstral mean is reset before each clip, so a result does not depend on what was
    recognised before it.

    Args:
        wav: float (samples,) in [-1, 1]; resampled to 16 kHz.

    Returns:
        the recognised words, normalized; "" when nothing was recognised.

    Raises:
        QualityError: pocketsphinx or jiwer is not installed (`WER_NOTICE`).
    """
    from scipy.signal import resample_poly

    notice = wer_available()
    if notice is not None:
        raise QualityError(notice)
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    ratio = math.gcd(int(sample_rate), RECOGNIZER_SAMPLE_RATE)
    if int(sample_rate) != RECOGNIZER_SAMPLE_RATE and wav.size:
        wav = resample_poly(wav, RECOGNIZER_SAMPLE_RATE // ratio, int(sample_rate) // ratio)
    pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    if pcm.size == 0:
        return ""
    decoder, initial_cmn = _decoder()
    decoder.set_cmn(initial_cmn)
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return normalize_transcript(hypothesis.hypstr) if hypothesis is not None else ""


def word_error_rate(wavs: Sequence[np.ndarray], transcripts: Sequence[str],
                    sample_rate: int) -> Optional[WerResult]:
    """Recognises each clip and scores it against its transcript.

    Args:
        wavs: float audio clips (samples,) in [-1, 1].
        transcripts: what each clip says, in spoken form.
        sample_rate: of the clips (hp.sampling_rate).

    Returns:
        WerResult, or None when pocketsphinx or jiwer is not installed (`wer_available()`).

    Raises:
        QualityError: counts that differ, or a transcript with no word.
    """
    if wer_available() is not None:
        return None
    import jiwer

    if len(wavs) != len(transcripts) or len(wavs) == 0:
        raise QualityError(f"{len(wavs)} clips for {len(transcripts)} transcripts; give the "
                           f"same number, at least one")
    references = [normalize_transcript(t) for t in transcripts]
    for i, (reference, text) in enumerate(zip(references, transcripts)):
        if not reference:
            raise QualityError(f"transcript {i + 1} ({text!r}) has no word to recognise")
    hypotheses = [recognize(wav, sample_rate) for wav in wavs]
    item_wer = [float(jiwer.wer(r, h)) for r, h in zip(references, hypotheses)]
    return WerResult(float(jiwer.wer(references, hypotheses)), item_wer, hypotheses, references)


# --------------------------------------------------------------------------------- references
def mcd_references(reference_mels: Sequence[Any], hp, griffin_lim_iters: int = 60,
                   max_items: int = DEFAULT_REFERENCE_ITEMS,
                   transcripts: Optional[Sequence[str]] = None,
                   n_coefficients: int = DEFAULT_MCD_COEFFICIENTS) -> Dict[str, Any]:
    """The scale of the scores on the recordings themselves: compute once, reuse.

    Griffin-Lim costs about 0.15 s per second of audio at 60 iterations on one CPU core (plus
    the recogniser's 0.3 s when `transcripts` are given), so only the first `max_items`
    recordings are put through it; the flat reference uses all of them.

    Args:
        reference_mels: the recordings' log-mels (n_mel, frames).
        hp: hparams of the mels (audio settings).
        griffin_lim_iters: Griffin-Lim iterations.
        max_items: recordings put through Griffin-Lim; 0 = none (griffin_lim_mcd is None).
        transcripts: one per recording, in spoken form; gives the Griffin-Lim WER ceiling.

    Returns:
        dict: `self_mcd` (0: the recording against itself), `griffin_lim_mcd` (the ceiling of a
        Griffin-Lim voice), `flat_mcd` (the hum), `griffin_lim_wer` (None without transcripts or
        without the recogniser), `items`, `griffin_lim_items`, `griffin_lim_iters`.
    """
    if len(reference_mels) == 0:
        raise QualityError("mcd_references: no reference mels")
    if transcripts is not None and len(transcripts) != len(reference_mels):
        raise QualityError(f"mcd_references: {len(transcripts)} transcripts for "
                           f"{len(reference_mels)} mels")
    _, flat = mcd_dtw_batch([flat_mel(m) for m in reference_mels], reference_mels, n_coefficients)
    chosen = list(reference_mels[:max(0, int(max_items))])
    resynthesized = [resynthesize(m, hp, griffin_lim_iters) for m in chosen]
    griffin_lim_mcd = (mcd_dtw_batch([mel for _, mel in resynthesized], chosen,
                                     n_coefficients)[1] if chosen else None)
    wer = None
    if transcripts is not None and chosen:
        result = word_error_rate([wav for wav, _ in resynthesized], transcripts[:len(chosen)],
                                 hp.sampling_rate)
        wer = result.wer if result is not None else None
    # Identical mels have a zero-cost DTW path: the recording against itself is 0 by definition.
    return {"self_mcd": 0.0, "griffin_lim_mcd": griffin_lim_mcd, "flat_mcd": flat,
            "griffin_lim_wer": wer, "items": len(reference_mels),
            "griffin_lim_items": len(chosen), "griffin_lim_iters": int(griffin_lim_iters)}


# ----------------------------------------------------------------------------------- results
@dataclass
class QualityResult:
    """Scores of several synthesized items against their recordings (JSON-ready).

    `references` is `mcd_references` of the same recordings (None when not computed); read
    `mean_mcd` between its `griffin_lim_mcd` (as good as a Griffin-Lim voice gets) and its
    `flat_mcd` (a hum).
    """
    mcd: List[float]  # per item, dB
    mean_mcd: float  # dB
    wer: Optional[float] = None  # all items' Griffin-Lim audio together; None = not measured
    item_wer: Optional[List[float]] = None
    references: Optional[Dict[str, Any]] = None
    n_coefficients: int = DEFAULT_MCD_COEFFICIENTS  # K in use (clipped to n_mel - 1)
    wer_notice: Optional[str] = None  # why `wer` is None when transcripts were given

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "QualityResult":
        """The inverse of `to_dict` (e.g. a diagnostics.jsonl line's "quality").

        Raises:
            QualityError: an unknown key or a missing `mcd` / `mean_mcd`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise QualityError(f"quality result: unknown key(s) {', '.join(unknown)}; "
                               f"expected {', '.join(sorted(names))}")
        missing = [n for n in ("mcd", "mean_mcd") if n not in values]
        if missing:
            raise QualityError(f"quality result: missing {', '.join(missing)}")
        return cls(**values)


def evaluate_quality(predicted_mels: Sequence[Any], reference_mels: Sequence[Any], hp,
                     transcripts: Optional[Sequence[str]] = None,
                     references: Optional[Dict[str, Any]] = None, griffin_lim_iters: int = 60,
                     n_coefficients: int = DEFAULT_MCD_COEFFICIENTS) -> QualityResult:
    """MCD of each synthesized mel against its recording, and the WER of its Griffin-Lim audio.

    Args:
        predicted_mels: the model's mels (n_mel, T1), e.g. free-running postnet mels.
        reference_mels: the recordings' mels (n_mel, T2), same order.
        hp: hparams of the mels.
        transcripts: spoken-form texts; None = no WER. Every item is put through Griffin-Lim
            and the recogniser (about 0.45 s per second of audio on one core).
        references: `mcd_references` of the recordings, computed once and passed in.

    Returns:
        QualityResult; `wer` None and `wer_notice` set when the recogniser is not installed.
    """
    if transcripts is not None and len(transcripts) != len(predicted_mels):
        raise QualityError(f"evaluate_quality: {len(transcripts)} transcripts for "
                           f"{len(predicted_mels)} mels")
    values, mean = mcd_dtw_batch(predicted_mels, reference_mels, n_coefficients)
    n_mel = to_numpy(predicted_mels[0]).shape[0]
    result = QualityResult(mcd=values, mean_mcd=mean, references=references,
                           n_coefficients=cepstral_order(n_coefficients, n_mel))
    if transcripts is not None:
        result.wer_notice = wer_available()
        if result.wer_notice is None:
            wavs = [griffin_lim(_check_mel(m, "predicted mel"), hp, n_iters=griffin_lim_iters)
                    for m in predicted_mels]
            scored = word_error_rate(wavs, transcripts, hp.sampling_rate)
            result.wer, result.item_wer = scored.wer, scored.item_wer
    return result
