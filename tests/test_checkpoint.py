"""Checkpoint format, atomic save, LATEST, pruning, safe loading and warm start."""
import os

import pytest
import torch

from checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, model_from_checkpoint,
                        prune_checkpoints, resolve_checkpoint, save_checkpoint, warm_start_state)
from hparams import create_hparams
from model import Tacotron2
from text.symbols import get_symbols


def _save(tmp_path, step, hp=None, extra=None):
    hp = hp or create_hparams("preset=tiny")
    torch.manual_seed(step)
    model = Tacotron2(hp)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    path = str(tmp_path / f"checkpoint_{step}")
    save_checkpoint(path, model=model, optimizer=optimizer, hp=hp, step=step, extra=extra)
    return path, model, hp


def test_round_trip_with_weights_only(tmp_path):
    path, model, hp = _save(tmp_path, 7, extra={"guard": {"remediated_at": 5}})
    raw = torch.load(path, weights_only=True)
    for key in ("iteration", "state_dict", "optimizer", "learning_rate", "hparams", "symbols",
                "scheduler", "scaler", "rng", "format_version"):
        assert key in raw
    assert raw["iteration"] == 7
    assert raw["learning_rate"] == pytest.approx(hp.learning_rate)
    assert raw["symbols"] == get_symbols("english")
    rebuilt, hp2, ckpt = model_from_checkpoint(path)
    assert hp2 == hp
    assert ckpt["extra"]["guard"]["remediated_at"] == 5
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def test_latest_points_at_newest_and_prune_keeps_newest(tmp_path):
    for step in (5, 10, 15):
        _save(tmp_path, step)
    assert resolve_checkpoint(str(tmp_path / "checkpoint_LATEST")).endswith("checkpoint_15")
    assert load_checkpoint(str(tmp_path / "checkpoint_LATEST"))["iteration"] == 15
    removed = prune_checkpoints(str(tmp_path), keep=1)
    assert [os.path.basename(p) for p in removed] == ["checkpoint_5", "checkpoint_10"]
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [15]
    assert prune_checkpoints(str(tmp_path), keep=0) == []


def test_latest_without_symlink_scans_folder(tmp_path):
    _save(tmp_path, 3)
    _save(tmp_path, 4)
    os.remove(tmp_path / "checkpoint_LATEST")
    assert resolve_checkpoint(str(tmp_path / "checkpoint_LATEST")).endswith("checkpoint_4")


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
    (None, "no 'state_dict'"),
    ("list", "not a checkpoint dict"),
])
def test_corrupt_or_foreign_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": 1}, path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_checkpoint_and_empty_latest(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "checkpoint_99"))
    with pytest.raises(CheckpointError, match="train first"):
        load_checkpoint(str(tmp_path / "checkpoint_LATEST"))


def test_truncated_checkpoint_is_an_error(tmp_path):
    path, _, _ = _save(tmp_path, 2)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint_2"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_hparams(tmp_path):
    path, _, _ = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(path, hp_overrides="decoder_rnn_dim=48")


def test_module_prefix_and_bare_state_dict(tmp_path):
    hp = create_hparams("preset=tiny")
    model = Tacotron2(hp)
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": prefixed}, tmp_path / "ddp.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    for name in ("ddp.pt", "bare.pt"):
        ckpt = load_checkpoint(str(tmp_path / name))
        assert set(ckpt["state_dict"]) == set(model.state_dict())


@pytest.mark.parametrize("symbol_set, cleaners", [("english", "english_cleaners"),
                                                   ("russian", "russian_cleaners")])
def test_warm_start_from_nvidia_state_dict(tmp_path, symbol_set, cleaners):
    """An NVIDIA-layout file (state_dict only, default size, English embedding) warm-starts."""
    source_hp = create_hparams("")
    source = Tacotron2(source_hp)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "tacotron2_statedict.pt")
    ckpt = load_checkpoint(str(tmp_path / "tacotron2_statedict.pt"))
    hp = create_hparams(f"symbol_set={symbol_set},text_cleaners=[{cleaners}]")
    target = Tacotron2(hp)
    symbols = get_symbols(symbol_set)
    report = warm_start_state(target, ckpt, hp.ignore_layers, symbols)
    assert "embedding.weight" in report["skipped"]
    state = target.state_dict()
    assert torch.equal(state["decoder.attention_rnn.weight_hh"],
                       source.state_dict()["decoder.attention_rnn.weight_hh"])
    english = get_symbols("english")
    if symbol_set == "english":
        assert report["embedding_rows_copied"] == 0  # same set, ignored: a fresh embedding
    else:
        assert report["embedding_rows_copied"] > 20
        space = symbols.index(" ")
        assert torch.equal(state["embedding.weight"][space],
                           source.state_dict()["embedding.weight"][english.index(" ")])
        # a Cyrillic letter takes the row of its transliteration
        assert torch.equal(state["embedding.weight"][symbols.index("м")],
                           source.state_dict()["embedding.weight"][english.index("m")])
