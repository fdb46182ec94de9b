"""Checkpoint format, atomic save, LATEST, pruning, safe loading and warm start."""
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, resolve_checkpoint,
                        save_checkpoint, warm_start_state)
from hparams import create_hparams
from model import Tacotron2
from run_files import RunFolder
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
    removed = RunFolder(str(tmp_path)).prune(1)
    assert [os.path.basename(p) for p in removed] == ["checkpoint_5", "checkpoint_10"]
    assert [s for s, _ in RunFolder(str(tmp_path)).checkpoints()] == [15]
    assert RunFolder(str(tmp_path)).prune(0) == []


def test_latest_without_symlink_scans_folder(tmp_path):
    _save(tmp_path, 3)
    _save(tmp_path, 4)
    os.remove(tmp_path / "checkpoint_LATEST")
    assert resolve_checkpoint(str(tmp_path / "checkpoint_LATEST")).endswith("checkpoint_4")


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a PyTorch checkpoint"),
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


# ---------------------------------------------------------------------------- refusal messages

class _RunsCode:
    """Pickles as a call of os.system: what a booby-trapped checkpoint holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_with_code_is_refused_and_never_run(tmp_path, legacy):
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint_3"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert str(info.value) == (f"{path}: contains code (blocked global `os.system`) and was "
                               f"refused; it was not loaded")
    assert not marker.exists()
    torch.save({"state_dict": {}, "payload": _Evaluates()}, path)
    with pytest.raises(CheckpointError, match=r"blocked global `builtins.eval`"):
        load_checkpoint(str(path))


def _refused(path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    return message


def test_text_and_random_bytes_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_bytes(b"not a checkpoint at all\nsecond line")
    assert _refused(text) == (f"{text}: not a PyTorch checkpoint (text: 'not a checkpoint at all "
                              f"second line'); give a checkpoint_<step> file or an NVIDIA .pt "
                              f"file")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes([0x70, 0x36, 0xc0, 0x03]) + bytes(range(200)))
    assert _refused(noise) == (f"{noise}: not a PyTorch checkpoint (unknown binary data starting "
                               f"70 36 c0 03 00 01 02 03); give a checkpoint_<step> file or an "
                               f"NVIDIA .pt file")
    import pickle
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    assert "not a PyTorch checkpoint (a Python pickle without torch's header)" in _refused(plain)
    import zipfile
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    assert "not a PyTorch checkpoint (a zip archive without torch's data.pkl)" in _refused(archive)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.98])
def test_a_cut_file_is_truncated(tmp_path, legacy, keep):
    path = tmp_path / "checkpoint_2"
    torch.save({"state_dict": {"w": torch.zeros(5000)}}, path,
               _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    message = _refused(path)
    assert message.startswith(f"{path}: truncated (")
    assert message.endswith("copy it again or use an earlier checkpoint")


def test_temporary_names_carry_the_pid(tmp_path, monkeypatch):
    written = []
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        written.append(os.path.basename(str(f)))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording_save)
    _save(tmp_path, 3)
    assert written == [f"checkpoint_3.tmp{os.getpid()}"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3", "checkpoint_LATEST"]


# ---------------------------------------------------------------------------- orphan temporaries

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _touch(path, mtime, symlink_to=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if symlink_to:
        os.symlink(symlink_to, path)
    else:
        path.write_bytes(b"partial")
    os.utime(path, (mtime, mtime), follow_symlinks=not symlink_to)


def test_remove_orphan_temporaries(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        dead, own = _dead_pid(), os.getpid()
        run = tmp_path / "run"
        t = 1_700_000_000
        _touch(run / "checkpoint_10", t)  # the newest checkpoint
        _touch(run / "checkpoint_5", t - 500)
        _touch(run / "hparams.json", t + 100)
        _touch(run / "notes.tmp1", t + 100)  # not ours: no checkpoint_ prefix
        _touch(run / "alignments" / "step_10.npz", t)
        orphans = [
            run / f"checkpoint_20.tmp{dead}",  # writer dead
            run / f"checkpoint_20.tmp{own}",  # this process: not saving now
            run / f"checkpoint_5.tmp{live.pid}",  # writer alive, but overtaken by checkpoint_10
            run / "alignments" / "step_5.npz.tmp.npz",  # no pid, overtaken
            run / "alignments" / f"step_20.tmp{dead}.npz",
        ]
        kept = [
            run / f"checkpoint_20.tmp{live.pid}",  # a live writer, newer than the newest
            run / "alignments" / "step_20.npz.tmp.npz",  # no pid, newer: maybe being written
        ]
        for path in orphans[:2] + orphans[4:] + kept:
            _touch(path, t + 100)
        for path in orphans[2:4]:
            _touch(path, t - 100)
        latest_tmp = run / f"checkpoint_LATEST.tmp{dead}"  # a dangling symlink
        _touch(latest_tmp, t + 100, symlink_to="checkpoint_20")
        orphans.append(latest_tmp)

        removed = RunFolder(str(run)).remove_orphan_temporaries()
        assert sorted(removed) == sorted(str(p) for p in orphans)
        assert not any(os.path.lexists(p) for p in orphans)
        assert all(p.exists() for p in kept)
        assert sorted(os.listdir(run)) == sorted(
            ["alignments", "checkpoint_10", "checkpoint_5", "hparams.json", "notes.tmp1",
             f"checkpoint_20.tmp{live.pid}"])
        assert RunFolder(str(run)).remove_orphan_temporaries() == []
    finally:
        live.stdin.close()
        live.wait()
    # its writer gone, the last one goes too
    assert (RunFolder(str(run)).remove_orphan_temporaries()
            == [str(run / f"checkpoint_20.tmp{live.pid}")])


def test_remove_orphan_temporaries_without_checkpoints(tmp_path):
    dead = _dead_pid()
    (tmp_path / f"checkpoint_5.tmp{dead}").write_bytes(b"x")
    (tmp_path / "alignments").mkdir()
    (tmp_path / "alignments" / "step_5.npz.tmp.npz").write_bytes(b"x")  # no pid, no newer save
    assert (RunFolder(str(tmp_path)).remove_orphan_temporaries()
            == [str(tmp_path / f"checkpoint_5.tmp{dead}")])
    assert RunFolder(str(tmp_path / "nowhere")).remove_orphan_temporaries() == []


def test_orphans_of_every_run_file_writer_are_removed(tmp_path):
    """hparams.json and diagnostics.jsonl are rewritten through `<name>.tmp<pid>` too; a kill
    inside those writes must not leave their temporaries behind for good."""

    dead = 2 ** 22 + 12345  # above Linux's default pid_max: never a live process
    names = [f"hparams.json.tmp{dead}", f"diagnostics.jsonl.tmp{dead}", f"checkpoint_4.tmp{dead}",
             f"checkpoint_LATEST.tmp{dead}", f".write_test.tmp{dead}"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / "hparams.json").write_text("{}")
    removed = RunFolder(str(tmp_path)).remove_orphan_temporaries()
    assert sorted(os.path.basename(p) for p in removed) == sorted(names)
    assert (tmp_path / "hparams.json").read_text() == "{}"


@pytest.mark.parametrize("saved_fused, loading_fused", [(False, True), (True, False)])
def test_a_checkpoint_resumes_with_this_machines_adam_kernel(tmp_path, saved_fused,
                                                             loading_fused):
    """The fused Adam kernel (device-side skip) and the plain one load each other's state: the
    loading optimizer keeps its own kernel choice and steps with the saved moments."""
    from checkpoint import restore_training_state
    hp = create_hparams("preset=tiny")

    def adam(model, fused):
        return torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)

    torch.manual_seed(0)
    model = Tacotron2(hp)
    optimizer = adam(model, saved_fused)
    sum(p.square().sum() for p in model.parameters()).backward()
    optimizer.step()
    path = str(tmp_path / "checkpoint_1")
    save_checkpoint(path, model=model, optimizer=optimizer, hp=hp, step=1)
    fresh = Tacotron2(hp)
    loading = adam(fresh, loading_fused)
    restore_training_state(load_checkpoint(path), fresh, loading)
    assert all(bool(g.get("fused")) == loading_fused for g in loading.param_groups)
    first = next(iter(loading.state.values()))
    assert float(first["step"]) == 1.0
    sum(p.square().sum() for p in fresh.parameters()).backward()
    loading.step()  # no device or dtype mismatch between the saved state and this kernel
    assert float(next(iter(loading.state.values()))["step"]) == 2.0


def test_a_smaller_reduction_factor_carries_the_first_frames_rows(tmp_path):
    """Gradual training: r=3 -> r=1 keeps every weight, the output layers' rows of each group's
    first frame, and the Adam moments cut the same way."""
    from checkpoint import carry_optimizer_state, carry_to_model
    hp3 = create_hparams("preset=tiny,n_frames_per_step=3")
    hp1 = hp3.replace(n_frames_per_step=1)
    torch.manual_seed(0)
    big, small = Tacotron2(hp3), Tacotron2(hp1)
    optimizer = torch.optim.Adam(big.parameters(), lr=1e-3)
    sum(p.square().sum() for p in big.parameters()).backward()
    optimizer.step()
    state = carry_to_model(big.state_dict(), small)
    small.load_state_dict(state)
    n_mel = hp3.n_mel_channels
    key = "decoder.linear_projection.linear_layer.weight"
    assert torch.equal(small.state_dict()[key], big.state_dict()[key][:n_mel])
    gate = "decoder.gate_layer.linear_layer.bias"
    assert torch.equal(small.state_dict()[gate], big.state_dict()[gate][:1])
    moments = carry_optimizer_state(optimizer.state_dict(), big, small)
    small_opt = torch.optim.Adam(small.parameters(), lr=1e-3)
    small_opt.load_state_dict(moments)
    index = [name for name, _ in big.named_parameters()].index(key)
    assert torch.equal(moments["state"][index]["exp_avg"],
                       optimizer.state_dict()["state"][index]["exp_avg"][:n_mel])
    # a warm start to a smaller r carries the same rows instead of dropping the layers
    path = str(tmp_path / "checkpoint_1")
    save_checkpoint(path, model=big, optimizer=optimizer, hp=hp3, step=1)
    report = warm_start_state(Tacotron2(hp1), load_checkpoint(path), [], get_symbols("english"))
    assert key in report["carried"] and not report["skipped"]
