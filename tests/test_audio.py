"""audio.py: wav loading and checks, the NVIDIA mel recipe, trimming, Griffin-Lim, saving."""
import librosa.filters
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

import audio
from audio import AudioError, TacotronSTFT
from hparams import create_hparams


def reference_mel(wav, sr=22050, n_fft=1024, hop=256, n_mels=80, fmin=0.0, fmax=8000.0):
    """NVIDIA's recipe written out in NumPy, independently of audio.py (float64)."""
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)
    padded = np.pad(np.asarray(wav, np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + len(wav) // hop
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(n_frames)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames, axis=0))  # (bins, frames)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return np.log(np.maximum(basis.astype(np.float64) @ magnitude, 1e-5))


def chirp(seconds=1.0, sr=22050, f0=60.0, f1=10000.0, amplitude=0.6):
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t ** 2)
    wav = amplitude * np.sin(phase)
    wav[: sr // 10] = 0.0  # a silent stretch exercises the 1e-5 floor
    return wav.astype(np.float32)


@pytest.mark.parametrize("preset,fmax", [("default", 8000.0), ("tiny", 8000.0), ("tiny", 5000.0)])
def test_mel_matches_nvidia_recipe(preset, fmax):
    hp = create_hparams(f"preset={preset},mel_fmax={fmax}")
    wavs = [chirp(), 0.3 * chirp(f0=2000.0, f1=100.0)]
    stft = TacotronSTFT.from_hparams(hp)
    mel = stft.mel_spectrogram(torch.from_numpy(np.stack(wavs)))
    assert mel.dtype == torch.float32
    assert mel.shape == (2, hp.n_mel_channels, 1 + len(wavs[0]) // 256)
    for i, wav in enumerate(wavs):
        expected = reference_mel(wav, n_mels=hp.n_mel_channels, fmax=fmax)
        assert np.abs(mel[i].numpy() - expected).max() < 1e-4
    assert mel.min().item() == pytest.approx(np.log(1e-5), abs=1e-4)  # silence sits on the floor


@pytest.mark.parametrize("samples", [513, 1000, 5120, 22050, 22050 + 255, 22050 + 256])
def test_frame_count(samples):
    stft = TacotronSTFT.from_hparams(create_hparams("preset=tiny"))
    wav = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32))
    assert stft.mel_spectrogram(wav[None]).shape[-1] == 1 + samples // 256
    assert stft.n_frames(samples) == 1 + samples // 256


def test_stft_buffers_follow_the_module_and_stay_out_of_state_dict():
    stft = TacotronSTFT.from_hparams(create_hparams("preset=tiny"))
    assert stft.state_dict() == {}
    assert {name for name, _ in stft.named_buffers()} == {"window", "mel_basis"}
    assert stft.window.shape == (1024,) and stft.mel_basis.shape == (20, 513)
    expected = scipy.signal.get_window("hann", 1024)
    np.testing.assert_allclose(stft.window.numpy(), expected, atol=1e-12)


def test_window_shorter_than_filter_is_centred():
    stft = TacotronSTFT(filter_length=1024, win_length=800, n_mel_channels=20)
    window = stft.window.numpy()
    assert window[:112].sum() == 0 and window[-112:].sum() == 0
    np.testing.assert_allclose(window[112:912], scipy.signal.get_window("hann", 800), atol=1e-12)


@pytest.mark.parametrize("wav,message", [
    (torch.zeros(1, 512), "too short"),
    (torch.full((1, 4000), 300.0), "outside [-1, 1]"),
])
def test_mel_spectrogram_rejects_bad_input(wav, message):
    with pytest.raises(AudioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TacotronSTFT.from_hparams(create_hparams("preset=tiny")).mel_spectrogram(wav)


def test_load_16bit_divides_by_32768(tmp_path):
    samples = np.array([-32768, -16384, -1, 0, 1, 12345, 32767], dtype=np.int16)
    path = tmp_path / "a.wav"
    sf.write(path, samples, 22050, subtype="PCM_16")
    wav = audio.load_wav(path, 22050)
    assert wav.dtype == np.float32
    np.testing.assert_array_equal(wav, samples.astype(np.float32) / 32768.0)


@pytest.mark.parametrize("subtype,tolerance", [("PCM_24", 2.0 ** -23), ("PCM_32", 2.0 ** -31),
                                               ("FLOAT", 1e-7), ("DOUBLE", 1e-7)])
def test_load_24bit_32bit_and_float(tmp_path, subtype, tolerance):
    values = np.array([-1.0, -0.5, -0.123456, 0.0, 0.25, 0.7654321], dtype=np.float64)
    path = tmp_path / "a.wav"
    sf.write(path, values, 22050, subtype=subtype)
    wav = audio.load_wav(path, 22050)
    assert wav.dtype == np.float32
    np.testing.assert_allclose(wav, values, atol=tolerance + 1e-7)


def test_24bit_full_scale_integers(tmp_path):
    # 24-bit integers k read back as k / 2**23.
    ints = np.array([-(2 ** 23), -1, 0, 1, 2 ** 22, 2 ** 23 - 1], dtype=np.int32)
    path = tmp_path / "a.wav"
    sf.write(path, ints << 8, 22050, subtype="PCM_24")  # soundfile takes left-aligned int32
    np.testing.assert_allclose(audio.load_wav(path), ints / 2.0 ** 23, atol=1e-7)


def test_float_file_is_clipped_to_unit_range(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([-1.5, 0.3, 1.2], np.float32), 22050, subtype="FLOAT")
    np.testing.assert_allclose(audio.load_wav(path), [-1.0, 0.3, 1.0], atol=1e-7)


def test_stereo_is_averaged_to_mono(tmp_path):
    left = np.array([0.5, 0.5, -1.0, 0.25])
    right = np.array([-0.25, 0.5, 0.0, 0.25])
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 22050, subtype="PCM_16")
    wav = audio.load_wav(path, 22050)
    assert wav.shape == (4,)
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-4)
    assert tuple(audio.audio_info(path)) == (22050, 4, 2)


def test_wrong_sample_rate_names_file_and_both_rates(tmp_path):
    path = tmp_path / "sixteen.wav"
    sf.write(path, np.zeros(1600, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError) as info:
        audio.load_wav(path, expected_sr=22050)
    message = str(info.value)
    assert str(path) in message and "16000" in message and "22050" in message
    assert "\n" not in message
    assert audio.load_wav(path).shape == (1600,)  # no expected rate: any rate is accepted


@pytest.mark.parametrize("function", [audio.load_wav, audio.audio_info])
def test_missing_and_unreadable_files_name_the_file(tmp_path, function):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="no such audio file") as info:
        function(missing)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not a wav file at all")
    with pytest.raises(AudioError, match="cannot read audio") as info:
        function(garbage)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)


def test_empty_wav_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.int16), 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match="no samples"):
        audio.load_wav(path)


def test_trim_silence_keeps_the_sound():
    sr = 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    wav = np.concatenate([np.zeros(sr), tone, np.zeros(sr)]).astype(np.float32)
    trimmed = audio.trim_silence(wav, top_db=40)
    assert len(tone) <= len(trimmed) < len(tone) + 2 * 2048
    assert np.abs(trimmed).max() == pytest.approx(np.abs(tone).max(), abs=1e-6)
    silent = np.zeros(4000, np.float32)
    assert audio.trim_silence(silent, top_db=40).shape == (4000,)


def test_mel_from_file_with_and_without_trim(tmp_path):
    sr = 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    wav = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr // 2)]).astype(np.float32)
    path = tmp_path / "tone.wav"
    sf.write(path, wav, sr, subtype="PCM_16")
    hp = create_hparams("preset=tiny")
    mel = audio.mel_from_file(path, hp)
    assert mel.dtype == torch.float32 and mel.shape == (20, 1 + len(wav) // 256)
    loaded = audio.load_wav(path, sr)
    expected = reference_mel(loaded, n_mels=20)
    assert np.abs(mel.numpy() - expected).max() < 1e-4
    trimmed = audio.mel_from_file(path, hp.replace(trim_silence=True))
    assert trimmed.shape[1] < mel.shape[1] // 2 + 20


def test_mel_from_file_wrong_rate_and_short_file(tmp_path):
    hp = create_hparams("preset=tiny")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(300, np.float32), 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match="too short") as info:
        audio.mel_from_file(short, hp)
    assert str(short) in str(info.value)
    other = tmp_path / "other.wav"
    sf.write(other, np.zeros(3000, np.float32), 24000, subtype="PCM_16")
    with pytest.raises(AudioError, match="24000 Hz but 22050 Hz"):
        audio.mel_from_file(other, hp)


def test_griffin_lim_recovers_a_tone():
    hp = create_hparams()
    sr, freq = hp.sampling_rate, 1000.0
    tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(sr // 2) / sr)).astype(np.float32)
    mel = TacotronSTFT.from_hparams(hp).mel_spectrogram(torch.from_numpy(tone)[None])[0]
    wav = audio.griffin_lim(mel, hp, n_iters=30)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == (mel.shape[1] - 1) * hp.hop_length
    assert np.abs(wav).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(wav))
    peak_hz = np.argmax(spectrum) * sr / len(wav)
    assert abs(peak_hz - freq) < 60  # within a mel band or so of the original
    assert audio.griffin_lim(mel.numpy(), hp, n_iters=2).shape == wav.shape  # numpy input too
    with pytest.raises(ValueError, match="n_mel=80"):
        audio.griffin_lim(mel[:10], hp)


def test_save_wav_writes_clipped_16bit(tmp_path):
    path = tmp_path / "out" / "x.wav"
    audio.save_wav(path, torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5]), 22050)
    info = sf.info(path)
    assert (info.samplerate, info.subtype, info.channels) == (22050, "PCM_16", 1)
    ints, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(ints, [-32767, -16384, 0, 16384, 32767])
