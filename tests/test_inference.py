"""inference.py: files written, batch = one by one, gate and max-steps reporting, every error."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from checkpoint import model_from_checkpoint, save_checkpoint
from hparams import create_hparams
from inference import InferenceError, main, synthesize
from model import Tacotron2
from text import UnknownCharacterError, text_to_sequence

# r = 2 so that "frames are a multiple of r" can fail; 16 kHz so that the wav's rate is checked
# against the checkpoint's hparams rather than the 22050 default.
TINY = "preset=tiny,n_frames_per_step=2,sampling_rate=16000,max_decoder_steps=12"
TEXTS = ["Hello world.", "A very fine book indeed, said he.", "Yes.", "It is a mark of the art."]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """(checkpoint path, hparams, model) of a tiny random model saved with its hparams."""
    folder = tmp_path_factory.mktemp("run")
    hp = create_hparams(TINY)
    torch.manual_seed(0)
    model = Tacotron2(hp)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    path = save_checkpoint(str(folder / "checkpoint_7"), model=model, optimizer=optimizer, hp=hp,
                           step=7)
    return path, hp, model


def _run(capsys, *argv):
    """main(argv) in-process -> (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("source", ["text", "text_file", "filelist"])
def test_cli_writes_wav_mel_and_plot(tiny_ckpt, tmp_path, capsys, source):
    path, hp, _ = tiny_ckpt
    if source == "text":
        args, names = ["--text", TEXTS[0]], ["sentence_001"]
    elif source == "text_file":
        sentences = tmp_path / "sentences.txt"
        sentences.write_text(f"{TEXTS[0]}\n\n  \n{TEXTS[2]}\n", encoding="utf-8")
        args, names = ["--text_file", sentences], ["sentence_001", "sentence_002"]
    else:
        filelist = tmp_path / "list.txt"
        filelist.write_text(f"wavs/LJ001-0001.wav|{TEXTS[0]}\nDUMMY/LJ002-0002.flac|{TEXTS[2]}\n",
                            encoding="utf-8")
        args, names = ["--filelist", filelist], ["LJ001-0001", "LJ002-0002"]
    out_dir = tmp_path / "out"
    status, out, err = _run(capsys, "-c", path, *args, "--output_dir", out_dir,
                            "--griffin_lim_iters", 4, "--seed", 1)
    assert status == 0, err
    assert sorted(os.listdir(out_dir)) == sorted(f"{n}.{ext}" for n in names
                                                 for ext in ("npy", "png", "wav"))
    for name in names:
        mel = np.load(out_dir / f"{name}.npy")
        assert mel.dtype == np.float32 and mel.ndim == 2
        assert mel.shape[0] == hp.n_mel_channels
        assert mel.shape[1] % hp.n_frames_per_step == 0 and mel.shape[1] > 0
        assert np.isfinite(mel).all()
        info = sf.info(str(out_dir / f"{name}.wav"))
        assert info.samplerate == hp.sampling_rate == 16000
        assert info.subtype == "PCM_16" and info.channels == 1
        assert info.frames == (mel.shape[1] - 1) * hp.hop_length  # Griffin-Lim's length
        assert (out_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{name}: " in out
    assert "real-time factor" in out and "mel generation" in out and "Griffin-Lim" in out


def _stop_steps(step_probs, threshold, max_steps):
    """Decoder steps each item takes alone: its first step whose gate exceeds `threshold`."""
    steps = []
    for probs in step_probs:
        fired = np.flatnonzero(probs > threshold)
        steps.append(int(fired[0]) + 1 if len(fired) else max_steps)
    return steps


def test_batch_equals_one_by_one(tiny_ckpt):
    path, hp, _ = tiny_ckpt
    # A gate threshold at which the items stop after different numbers of steps, so the batch
    # holds texts of different lengths that also finish at different times. Without dropout
    # the decoding is deterministic and a stop only cuts it short, so one run per item that
    # never stops (threshold 2) gives the stop step for any threshold.
    probe, _, _ = model_from_checkpoint(path, "cpu", "p_prenet_dropout=0,gate_threshold=2")
    step_probs = []
    for text in TEXTS:
        ids = text_to_sequence(text, hp.text_cleaners)
        with torch.no_grad():
            gate = probe.inference(torch.tensor([ids]), torch.tensor([len(ids)])).gate[0]
        # (steps r,) -> (steps, r): a step stops when any of its r gates fires
        step_probs.append(torch.sigmoid(gate).view(-1, hp.n_frames_per_step).max(1).values.numpy())
    values = np.unique(np.concatenate(step_probs))
    candidates = (values[1:] + values[:-1]) / 2
    threshold = max(candidates, key=lambda c: len(set(
        _stop_steps(step_probs, c, hp.max_decoder_steps))))
    expected_steps = _stop_steps(step_probs, threshold, hp.max_decoder_steps)
    assert len(set(expected_steps)) > 1

    model, hp, _ = model_from_checkpoint(path, "cpu",
                                         f"p_prenet_dropout=0,gate_threshold={float(threshold)!r}")
    batched = synthesize(model, hp, TEXTS, "cpu", batch_size=4)
    alone = [synthesize(model, hp, [text], "cpu", batch_size=1)[0] for text in TEXTS]
    lengths = [item["mel"].shape[1] for item in alone]
    assert lengths == [s * hp.n_frames_per_step for s in expected_steps]
    for b, a in zip(batched, alone):
        assert b["mel"].shape == a["mel"].shape and b["hit_max_steps"] == a["hit_max_steps"]
        np.testing.assert_allclose(b["mel"], a["mel"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(b["alignment"], a["alignment"], atol=1e-5, rtol=0)


def test_synthesize_api_order_names_seed(tiny_ckpt):
    # gate_threshold > 1: every item decodes max_decoder_steps steps, each after the first fed
    # through the prenet's dropout
    model, hp, _ = model_from_checkpoint(tiny_ckpt[0], "cpu", "gate_threshold=2")
    texts = [TEXTS[2], TEXTS[1], TEXTS[0]]  # not sorted by length: order must be kept
    first = synthesize(model, hp, texts, "cpu", batch_size=2, seed=3, names=["a", "b", "c"])
    again = synthesize(model, hp, texts, "cpu", batch_size=2, seed=3, names=["a", "b", "c"])
    other = synthesize(model, hp, texts, "cpu", batch_size=2, seed=4)
    assert [r["name"] for r in first] == ["a", "b", "c"]
    assert [r["text"] for r in first] == texts
    assert "name" not in other[0]
    n_tokens = [len(text_to_sequence(t, hp.text_cleaners)) for t in texts]
    for item, n in zip(first, n_tokens):
        steps, tokens = item["alignment"].shape
        assert tokens == n
        assert item["mel"].shape == (hp.n_mel_channels, steps * hp.n_frames_per_step)
        np.testing.assert_allclose(item["alignment"].sum(axis=1), 1.0, atol=1e-4)
        assert {"diagonal_score", "focus_score"} <= set(item["scores"])
        assert isinstance(item["hit_max_steps"], bool)
    # the prenet's dropout is on at inference: the seed decides the output
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["mel"], b["mel"])
    assert any(a["mel"].shape != c["mel"].shape or not np.allclose(a["mel"], c["mel"])
               for a, c in zip(first, other))


@pytest.mark.parametrize("text, error", [("", InferenceError), ("   ", InferenceError),
                                         ("50% ~ off", UnknownCharacterError)])
def test_synthesize_rejects_bad_text(tiny_ckpt, text, error):
    _, hp, model = tiny_ckpt
    with pytest.raises(error, match="text 2: "):
        synthesize(model, hp, ["Fine.", text], "cpu")


def test_max_steps_is_reported_by_name_with_scores(tiny_ckpt, tmp_path, capsys):
    path, hp, _ = tiny_ckpt
    out_dir = tmp_path / "out"
    status, out, err = _run(capsys, "-c", path, "--text", TEXTS[1], "--output_dir", out_dir,
                            "--max_decoder_steps", 3, "--gate_threshold", 1.5,
                            "--griffin_lim_iters", 2)
    assert status == 0
    assert "max_decoder_steps 3" in out and "stop: hit max_decoder_steps" in out
    report = [line for line in err.splitlines() if "sentence_001 reached" in line]
    assert len(report) == 1
    assert "max_decoder_steps=3" in report[0] and "diagonal_score" in report[0]
    assert "focus_score" in report[0] and "the usual sign of a failed alignment" in report[0]
    assert np.load(out_dir / "sentence_001.npy").shape == (hp.n_mel_channels,
                                                          3 * hp.n_frames_per_step)


def test_gate_stop_is_not_reported(tiny_ckpt, tmp_path, capsys):
    path, _, _ = tiny_ckpt
    # threshold 0: the first step's gate fires for every item
    status, out, err = _run(capsys, "-c", path, "--text", TEXTS[0], "--output_dir", tmp_path,
                            "--gate_threshold", 0.0, "--griffin_lim_iters", 2)
    assert status == 0 and "stop: gate" in out and "reached" not in err


@pytest.mark.parametrize("bare", [True, False])
def test_nvidia_state_dict_only_file_with_hparams(tiny_ckpt, tmp_path, capsys, bare):
    path, hp, model = tiny_ckpt
    nvidia = tmp_path / "tacotron2_statedict.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP-style keys too
    torch.save(state if bare else {"state_dict": state}, nvidia)
    mels = {}
    for name, ckpt, extra in (("ours", path, []), ("nvidia", nvidia, ["--hparams", TINY])):
        status, out, err = _run(capsys, "-c", ckpt, "--text", TEXTS[0], "--seed", 5,
                                "--output_dir", tmp_path / name, "--griffin_lim_iters", 2, *extra)
        assert status == 0, err
        mels[name] = np.load(tmp_path / name / "sentence_001.npy")
    np.testing.assert_array_equal(mels["ours"], mels["nvidia"])


def _blank_file(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n", encoding="utf-8")
    return blank


@pytest.mark.parametrize("case, fragment", [
    ("unknown_char", "character(s) '~' not in the 'english' symbol set"),
    ("missing_checkpoint", "no such checkpoint"),
    ("empty_text", "--text: empty text"),
    ("blank_text_file", "blank.txt: empty text; the file holds no sentence"),
    ("missing_text_file", "nope.txt: cannot read sentences"),
    ("bad_filelist_line", "list.txt:1: expected 'audio_path|text'"),
    ("state_dict_without_hparams", "weights do not fit the model"),
    ("bad_hparams", "unknown hparam 'no_such_name'"),
])
def test_errors_are_one_line_and_exit_2(tiny_ckpt, tmp_path, capsys, case, fragment):
    path, _, model = tiny_ckpt
    out_dir = tmp_path / "out"
    argv = ["-c", path, "--text", "Fine.", "--output_dir", out_dir]
    if case == "unknown_char":
        argv[3] = "Ten ~ twelve."
    elif case == "missing_checkpoint":
        argv[1] = tmp_path / "checkpoint_404"
    elif case == "empty_text":
        argv[3] = ""
    elif case == "blank_text_file":
        argv[2:4] = ["--text_file", _blank_file(tmp_path)]
    elif case == "missing_text_file":
        argv[2:4] = ["--text_file", tmp_path / "nope.txt"]
    elif case == "bad_filelist_line":
        (tmp_path / "list.txt").write_text("only text, no path\n", encoding="utf-8")
        argv[2:4] = ["--filelist", tmp_path / "list.txt"]
    elif case == "state_dict_without_hparams":
        torch.save(model.state_dict(), tmp_path / "bare.pt")  # NVIDIA size assumed: no fit
        argv[1] = tmp_path / "bare.pt"
    elif case == "bad_hparams":
        argv += ["--hparams", "no_such_name=1"]
    status, out, err = _run(capsys, *argv)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("inference.py: error: ")
    assert fragment in err
    assert not out_dir.exists()  # nothing written for a failed run


def test_argparse_errors_exit_2(tiny_ckpt, capsys):
    path, _, _ = tiny_ckpt
    with pytest.raises(SystemExit) as info:
        main(["-c", path, "--text", "Hi.", "--batch_size", "0"])
    assert info.value.code == 2
    assert "--batch_size must be >= 1" in capsys.readouterr().err
