"""Audio in and out: load and check a wav, trim silence, NVIDIA-identical log-mel, Griffin-Lim.

The mel spectrogram is NVIDIA Tacotron 2's, so mels made here feed WaveGlow and HiFi-GAN
checkpoints trained on NVIDIA mels: periodic Hann window, input reflect-padded by
filter_length // 2 on both sides, magnitude (power 1), librosa's Slaney mel basis, and
log(clamp(x, 1e-5)). A clip of `samples` samples gives 1 + samples // hop_length frames.

librosa is imported inside the functions that need it: it takes seconds to import, and most
callers of this module (the diagnostics, checkpoint tools) never build a mel.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from messages import one_line

# The hparams that decide a mel's values; the mel cache key in data_utils is built from these.
AUDIO_HPARAMS: Tuple[str, ...] = (
    "sampling_rate", "filter_length", "hop_length", "win_length", "n_mel_channels",
    "mel_fmin", "mel_fmax", "max_wav_value", "trim_silence", "trim_top_db",
)

# log(clamp(x, 1e-5)): the value of a silent mel bin is log(1e-5) = -11.5129.
MEL_CLIP_VALUE = 1e-5

_INT24_32_SCALE = 2147483648.0  # libsndfile reads 24- and 32-bit PCM left-aligned in an int32


class AudioError(ValueError):
    """A wav that cannot be read or does not match the hparams; the message names the file."""


class AudioInfo(NamedTuple):
    sample_rate: int
    n_frames: int  # samples per channel
    channels: int


def sample_rate_message(path: str, sr: int, expected_sr: int) -> str:
    """The one-line complaint about a file at the wrong sample rate (both rates named)."""
    return (f"{path}: sample rate is {sr} Hz but {expected_sr} Hz is expected (resample the "
            f"file, e.g. sox in.wav -r {expected_sr} out.wav, or set sampling_rate={sr})")


def audio_info(path: Union[str, os.PathLike]) -> AudioInfo:
    """Reads the header only (no decoding).

    Returns:
        AudioInfo(sample_rate, n_frames, channels); a plain tuple can unpack it.

    Raises:
        AudioError: the file is missing or not a readable audio file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot read audio header: {one_line(err)}") from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def load_wav(path: Union[str, os.PathLike], expected_sr: Optional[int] = None,
             max_wav_value: float = 32768.0) -> np.ndarray:
    """Loads an audio file as mono float32 in [-1, 1]; never resamples.

    Scaling by sample format:
      * 16-bit PCM: read as int16 and divided by `max_wav_value` (32768, as NVIDIA does).
      * 24- and 32-bit PCM: read as int32 (libsndfile left-aligns 24-bit samples) and divided
        by 2**31, so full scale is 1.0 for both.
      * float and double: taken as stored, then clipped to [-1, 1].
      * other formats libsndfile reads (8-bit, u-law, FLAC, ...): libsndfile's float scaling.
    Several channels are averaged into one.

    Args:
        path: the audio file.
        expected_sr: the required sample rate (hp.sampling_rate); None accepts any.
        max_wav_value: the divisor for 16-bit samples.

    Returns:
        float32 array (samples,).

    Raises:
        AudioError: missing or unreadable file, a sample rate other than `expected_sr`, or no
            samples. One line that names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(path) as f:
            if expected_sr is not None and f.samplerate != expected_sr:
                raise AudioError(sample_rate_message(path, f.samplerate, expected_sr))
            if f.subtype == "PCM_16":
                data = f.read(dtype="int16", always_2d=True).astype(np.float32) / max_wav_value
            elif f.subtype in ("PCM_24", "PCM_32"):
                data = (f.read(dtype="int32", always_2d=True) / _INT24_32_SCALE).astype(np.float32)
            else:
                data = np.clip(f.read(dtype="float32", always_2d=True), -1.0, 1.0)
    except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot read audio: {one_line(err)}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    # (samples, channels) -> (samples,)
    wav = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    return np.ascontiguousarray(wav, dtype=np.float32)


def trim_silence(wav: np.ndarray, top_db: float, frame_length: int = 2048,
                 hop_length: int = 512) -> np.ndarray:
    """Cuts leading and trailing frames quieter than `top_db` below the loudest frame.

    The rule of librosa.effects.trim (frame power of centred, zero-padded frames; a frame is
    sound when its power is within `top_db` dB of the peak frame's), in NumPy: librosa's
    version costs seconds of JIT compilation in every fresh data-loader worker.

    Args:
        wav: float array (samples,).
        top_db: threshold in dB below the loudest frame.

    Returns:
        the trimmed array (a view); `wav` itself when the whole clip is silent.
    """
    x = np.asarray(wav, dtype=np.float64)
    if x.size == 0:
        return wav
    n_frames = 1 + len(x) // hop_length
    padded = np.pad(x, frame_length // 2)
    # (len + 1, frame_length) windows, every hop_length-th -> (n_frames, frame_length)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]
    power = np.mean(frames[:n_frames] ** 2, axis=1)
    peak = power.max()
    if peak <= 0.0:
        return wav
    db = 10.0 * np.log10(np.maximum(power, 1e-10) / max(peak, 1e-10))
    loud = np.flatnonzero(db > -top_db)
    start = int(loud[0]) * hop_length
    end = min(len(x), (int(loud[-1]) + 1) * hop_length)
    return wav[start:end]


def _mel_basis(hp_like) -> np.ndarray:
    """librosa's Slaney mel basis (n_mel, filter_length // 2 + 1), float32 as NVIDIA uses it."""
    import librosa.filters  # librosa takes about a second to import; only new mels need it

    return librosa.filters.mel(sr=hp_like.sampling_rate, n_fft=hp_like.filter_length,
                               n_mels=hp_like.n_mel_channels, fmin=hp_like.mel_fmin,
                               fmax=hp_like.mel_fmax)


class TacotronSTFT(torch.nn.Module):
    """NVIDIA Tacotron 2's log-mel spectrogram, on whatever device the module is moved to.

    The window and the mel basis are non-persistent buffers, so `.to(device)` moves them and
    they never enter a state_dict. The transform runs in `dtype` (float64 by default): in
    float32 the FFT's rounding noise, about 1e-7 of the frame's peak, is comparable to the
    1e-5 clamp in quiet mel bins and moves their log by up to ~5e-3; float64 matches the exact
    recipe to ~1e-10 at about 1.3x the cost on a CPU. Pass dtype=torch.float32 on a device
    without float64 (Apple MPS).
    """

    def __init__(self, filter_length: int = 1024, hop_length: int = 256, win_length: int = 1024,
                 n_mel_channels: int = 80, sampling_rate: int = 22050, mel_fmin: float = 0.0,
                 mel_fmax: float = 8000.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if win_length > filter_length:
            raise ValueError(f"win_length={win_length} exceeds filter_length={filter_length}")
        self.filter_length = filter_length
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mel_channels = n_mel_channels
        self.sampling_rate = sampling_rate
        self.mel_fmin = mel_fmin
        self.mel_fmax = mel_fmax
        # Periodic Hann (scipy get_window(..., fftbins=True)), centred in filter_length with
        # zeros as librosa's pad_center does when win_length < filter_length.
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        left = (filter_length - win_length) // 2
        window = F.pad(window, (left, filter_length - win_length - left))
        self.register_buffer("window", window.to(dtype), persistent=False)
        basis = torch.from_numpy(_mel_basis(self))  # (n_mel, filter_length // 2 + 1)
        self.register_buffer("mel_basis", basis.to(dtype), persistent=False)

    @classmethod
    def from_hparams(cls, hp, dtype: torch.dtype = torch.float64) -> "TacotronSTFT":
        return cls(hp.filter_length, hp.hop_length, hp.win_length, hp.n_mel_channels,
                   hp.sampling_rate, hp.mel_fmin, hp.mel_fmax, dtype=dtype)

    def n_frames(self, n_samples: int) -> int:
        """Frames of the mel of a clip of `n_samples` samples."""
        return 1 + n_samples // self.hop_length

    def mel_spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-mel of a batch of waveforms.

        Args:
            wav: float (B, samples) in [-1, 1] (a 1-D tensor is taken as B = 1); moved to the
                module's device; samples > filter_length // 2 (the reflect padding needs them).

        Returns:
            float32 (B, n_mel, 1 + samples // hop_length) on the module's device.

        Raises:
            AudioError: values outside [-1, 1] (int16-scale input) or a clip too short to pad.
        """
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        pad = self.filter_length // 2
        if wav.shape[-1] <= pad:
            raise AudioError(f"{wav.shape[-1]} samples is too short for the mel spectrogram: "
                             f"need more than filter_length // 2 = {pad}")
        peak = float(wav.abs().max())
        if peak > 1.0:
            raise AudioError(f"waveform peak {peak:.4g} is outside [-1, 1]: divide int16 "
                             f"samples by max_wav_value first")
        spec = torch.stft(wav.to(device=self.window.device, dtype=self.window.dtype),
                          n_fft=self.filter_length, hop_length=self.hop_length,
                          win_length=self.filter_length, window=self.window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True)  # (B, filter_length // 2 + 1, frames)
        magnitude = spec.abs()
        # (n_mel, bins) @ (B, bins, frames) -> (B, n_mel, frames)
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=MEL_CLIP_VALUE)).to(torch.float32)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.mel_spectrogram(wav)


@functools.lru_cache(maxsize=8)
def _cached_stft(filter_length: int, hop_length: int, win_length: int, n_mel_channels: int,
                 sampling_rate: int, mel_fmin: float, mel_fmax: float) -> TacotronSTFT:
    # One module per setting and process: the mel basis costs a few ms to build.
    return TacotronSTFT(filter_length, hop_length, win_length, n_mel_channels, sampling_rate,
                        mel_fmin, mel_fmax)


def stft_for(hp) -> TacotronSTFT:
    """A shared CPU TacotronSTFT for `hp`'s audio settings (built once per process)."""
    return _cached_stft(hp.filter_length, hp.hop_length, hp.win_length, hp.n_mel_channels,
                        hp.sampling_rate, float(hp.mel_fmin), float(hp.mel_fmax))


def wav_for_mel(path: Union[str, os.PathLike], hp) -> np.ndarray:
    """The samples `mel_from_file` transforms: loaded at hp.sampling_rate, trimmed if asked."""
    wav = load_wav(path, hp.sampling_rate, hp.max_wav_value)
    if hp.trim_silence:
        wav = trim_silence(wav, hp.trim_top_db)
    return wav


def mel_from_file(path: Union[str, os.PathLike], hp) -> torch.Tensor:
    """Log-mel of one audio file.

    Returns:
        float32 (n_mel, frames) on the CPU.

    Raises:
        AudioError: as `load_wav`, or a clip shorter than filter_length // 2 + 1 samples.
    """
    wav = wav_for_mel(path, hp)
    try:
        mel = stft_for(hp).mel_spectrogram(torch.from_numpy(wav).unsqueeze(0))
    except AudioError as err:
        raise AudioError(f"{os.fspath(path)}: {err}") from None
    return mel[0]  # (1, n_mel, frames) -> (n_mel, frames)


def griffin_lim(mel: Union[torch.Tensor, np.ndarray], hp, n_iters: int = 60,
                power: float = 1.0, seed: int = 0, momentum: float = 0.99) -> np.ndarray:
    """Waveform from a log-mel, for listening in TensorBoard (not vocoder quality).

    The magnitude spectrogram is the pseudo-inverse of the mel basis applied to exp(mel),
    clamped at 0 (as exact as NNLS where the mel has energy, and hundreds of times faster); its
    phase comes from fast Griffin-Lim (Perraudin et al. 2013: each new phase estimate is pushed
    on by `momentum` times its change), with the window, hop and reflect padding of
    `TacotronSTFT`.

    Args:
        mel: (n_mel, frames) log-mel as made by `TacotronSTFT`.
        n_iters: Griffin-Lim iterations.
        power: magnitudes are raised to this before phase recovery (>1 sharpens; 1 = exact).
        seed: seed of the random initial phase.
        momentum: 0 gives the original Griffin-Lim.

    Returns:
        float32 (samples,) in [-1, 1], (frames - 1) * hop_length samples; scaled down only when
        its peak exceeds 1.
    """
    mel = torch.as_tensor(np.asarray(mel) if not isinstance(mel, torch.Tensor) else mel.detach())
    mel = mel.to("cpu", torch.float64)
    if mel.dim() != 2 or mel.shape[0] != hp.n_mel_channels:
        raise ValueError(f"griffin_lim expects a (n_mel={hp.n_mel_channels}, frames) mel, "
                         f"got shape {tuple(mel.shape)}")
    frames = mel.shape[1]
    # reflect padding needs more than filter_length // 2 samples: pad short mels with silence
    # (the log floor) and cut the audio back afterwards
    min_frames = hp.filter_length // (2 * hp.hop_length) + 2
    if frames < min_frames:
        floor = float(np.log(MEL_CLIP_VALUE))
        mel = torch.cat([mel, torch.full((mel.shape[0], min_frames - frames), floor,
                                         dtype=mel.dtype)], dim=1)
    stft = stft_for(hp)
    window = stft.window.to(torch.float64)
    # (bins, n_mel) @ (n_mel, frames) -> (bins, frames)
    magnitude = torch.linalg.pinv(stft.mel_basis.to(torch.float64)) @ torch.exp(mel)
    magnitude = magnitude.clamp(min=0.0) ** power
    length = (mel.shape[1] - 1) * hp.hop_length
    stft_args = dict(n_fft=hp.filter_length, hop_length=hp.hop_length,
                     win_length=hp.filter_length, window=window, center=True)

    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=torch.float64)
    angles = torch.polar(torch.ones_like(phase), 2 * np.pi * phase)
    previous = torch.zeros_like(angles)
    for _ in range(n_iters):
        wav = torch.istft(magnitude * angles, length=length, **stft_args)
        rebuilt = torch.stft(wav, pad_mode="reflect", return_complex=True, **stft_args)
        angles = rebuilt - (momentum / (1.0 + momentum)) * previous
        angles = angles / angles.abs().clamp(min=1e-16)
        previous = rebuilt
    wav = torch.istft(magnitude * angles, length=length, **stft_args).numpy()
    wav = wav[:max(0, frames - 1) * hp.hop_length]
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 1.0:
        wav = wav / peak
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def save_wav(path: Union[str, os.PathLike], wav: Union[torch.Tensor, np.ndarray],
             sr: int) -> None:
    """Writes mono 16-bit PCM; samples are clipped to [-1, 1] and scaled by 32767."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    sf.write(path, np.round(wav * 32767.0).astype(np.int16), int(sr), subtype="PCM_16")
