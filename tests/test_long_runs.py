"""Runs that survive the field: exact resume, skipped non-finite steps, divergence, one trainer per
run folder, one-line errors for bad input, and the curriculum of a remediation.

Each test but one starts `python train.py` and is `slow`; test_faults.py kills trainers and feeds
them what these do not.
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch

import train
from data_utils import TextMelCollate, prepare_dataloaders
from helpers import ROOT, TRAIN, corpus_hparams, train_command, wait_for, write_token_corpus
from hparams import create_hparams
from loss_function import Tacotron2Loss
from model import Tacotron2

STEP_LINE = re.compile(r"step (\d+): total (\S+) = ")


def _hparams(corpus, extra=""):
    base = corpus_hparams(*corpus, "iters_per_log=1,keep_checkpoints=0")
    return base + ("," + extra if extra else "")


def _train(tmp_path, hparams, *more, run_name="trial_0", log="logs", expect=0):
    proc = subprocess.run(train_command(tmp_path, hparams, *more, run_name=run_name, log=log),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _step_losses(log_path):
    losses = {}
    for match in STEP_LINE.finditer(open(log_path, encoding="utf-8").read()):
        losses.setdefault(int(match.group(1)), []).append(match.group(2))
    return losses


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_token_corpus(str(tmp_path_factory.mktemp("corpus")), n_train=18, n_val=4)


# ---------------------------------------------------------------------------------- exact resume
@pytest.mark.slow
def test_resume_is_exact_in_the_middle_of_an_epoch(tmp_path, corpus):
    """12 steps straight == 7 steps + resume to 12, bit for bit (18 items, batch 4: an epoch is
    5 batches, so step 7 is inside the second epoch)."""
    hp = _hparams(corpus, "iters_per_validation=4,iters_per_checkpoint=100")
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    _train(straight, hp, "--max_steps=12")
    _train(split, hp, "--max_steps=7")
    latest = split / "output" / "trial_0" / "checkpoint_LATEST"
    ckpt = torch.load(latest, weights_only=True)
    assert ckpt["iteration"] == 7 and ckpt["extra"]["batch_in_epoch"] == 2
    _train(split, hp, "-c", str(latest), "--max_steps=12")

    a = torch.load(straight / "output" / "trial_0" / "checkpoint_12", weights_only=True)
    b = torch.load(split / "output" / "trial_0" / "checkpoint_12", weights_only=True)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s_a["exp_avg"], s_b["exp_avg"])
    straight_losses = _step_losses(straight / "logs" / "train.log")
    split_losses = _step_losses(split / "logs" / "train.log")
    assert sorted(straight_losses) == sorted(split_losses) == list(range(1, 13))
    assert straight_losses == split_losses
    # the validation records of both runs are the same steps, each once
    steps = [json.loads(line)["step"] for line in
             (split / "output" / "trial_0" / "diagnostics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]


@pytest.mark.slow
def test_resume_drops_records_newer_than_its_checkpoint(tmp_path, corpus):
    hp = _hparams(corpus, "iters_per_validation=2,iters_per_checkpoint=4")
    _train(tmp_path, hp, "--max_steps=8")
    run = tmp_path / "output" / "trial_0"
    _train(tmp_path, hp, "-c", str(run / "checkpoint_4"), "--max_steps=6")
    steps = [json.loads(line)["step"] for line in
             (run / "diagnostics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # 6 and 8 of the first run were dropped, 6 written again
    assert sorted(os.listdir(run / "alignments")) == ["step_2.npz", "step_4.npz", "step_6.npz"]


# ---------------------------------------------------------------------------------- divergence
def _tiny_batch(corpus, poison=False):
    hp = create_hparams(_hparams(corpus))
    _, val_loader, _, val_set = prepare_dataloaders(hp)
    batch = TextMelCollate(hp.n_frames_per_step)([val_set[i] for i in range(2)])
    if poison:
        batch.mel[0, 0, 0] = float("nan")
    return hp, batch


class _StepRun:
    def __init__(self, hp):
        self.hp, self.device, self.step, self.world_size = hp, torch.device("cpu"), 1, 1


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_is_skipped_weights_and_optimizer_untouched(corpus, device, fused):
    """A good step, then a poisoned one: the second leaves weights, batch-norm statistics and
    every Adam tensor bit-equal to what the first left, with the skip decided on the device
    (fused Adam's found-inf input) or, without a fused kernel, on the host."""
    hp, good = _tiny_batch(corpus)
    _, poisoned = _tiny_batch(corpus, poison=True)
    torch.manual_seed(0)
    model = Tacotron2(hp).to(device)
    optimizer = train.make_optimizer(model, hp) if fused else torch.optim.Adam(
        model.parameters(), lr=1e-3)
    assert bool(optimizer.defaults.get("fused")) == fused
    scaler = torch.amp.GradScaler(device, enabled=False)
    run = _StepRun(hp)
    run.device = torch.device(device)
    losses, grad_norm, skipped = train.train_step(model, good, Tacotron2Loss(hp), optimizer,
                                                  scaler, run).read()
    assert np.isfinite(losses["total"]) and not skipped
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam = {id(p): {k: v.clone() for k, v in st.items()} for p, st in optimizer.state.items()}
    run.step += 1
    losses, grad_norm, skipped = train.train_step(model, poisoned, Tacotron2Loss(hp), optimizer,
                                                  scaler, run).read()
    assert not np.isfinite(losses["total"]) and not np.isfinite(grad_norm) and skipped
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for p, st in optimizer.state.items():
        for k, v in st.items():
            assert torch.equal(v, adam[id(p)][k]), k


def test_step_figures_are_read_once_for_many_steps(corpus):
    """read_steps: the pending steps' losses and gradient norms in one copy, in order."""
    hp, batch = _tiny_batch(corpus)
    model = Tacotron2(hp)
    optimizer = train.make_optimizer(model, hp)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = _StepRun(hp)
    steps = [train.train_step(model, batch, Tacotron2Loss(hp), optimizer, scaler, run)
             for _ in range(3)]
    read = train.read_steps(steps)
    assert [r[1] for r in read] == [s.read()[1] for s in steps]
    assert set(read[0][0]) == {"total", "mel", "mel_postnet", "gate", "guided_attn"}


def _train_with_mels(tmp_path, hparams: str, change: str, *more: str):
    """`python train.py` whose dataset's mels pass through `change` (Python statements on `mel`;
    `calls[0]` counts the mels loaded so far): a stand-in for data that goes bad mid-run."""
    script = tmp_path / "changed_mels.py"
    script.write_text(
        "import runpy, sys, data_utils\n"
        "original = data_utils.TextMelDataset.get_mel\n"
        "calls = [0]\n"
        "def get_mel(self, index):\n"
        "    calls[0] += 1\n"
        "    mel = original(self, index)\n"
        f"    {change}\n"
        "    return mel\n"
        "data_utils.TextMelDataset.get_mel = get_mel\n"
        "sys.argv = ['train.py'] + sys.argv[1:]\n"
        f"runpy.run_path({TRAIN!r}, run_name='__main__')\n")
    cmd = train_command(tmp_path, hparams, *more, "--skip_data_check")
    cmd[1] = str(script)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.slow
def test_non_finite_steps_are_counted_then_the_run_stops_with_divergence(tmp_path, corpus):
    """A filelist whose every mel holds NaN: each step is skipped, max_bad_steps of them raise
    the divergence flag and, with red_flag_action=stop, the run exits 3 with a report."""
    hp = _hparams(corpus, "max_bad_steps=3,red_flag_action=stop,iters_per_validation=100,"
                          "mel_fmax=8000.0")
    proc = _train_with_mels(tmp_path, hp, "mel = mel.clone()\n    mel[0, 0] = float('nan')",
                            "--max_steps=10")
    assert proc.returncode == train.EXIT_RED_FLAG, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "3 non-finite steps skipped so far" in log
    assert "red flag 5 (divergence)" in log
    reports = list((tmp_path / "output" / "trial_0").glob("red_flag_report_step_*.txt"))
    assert reports and "divergence" in reports[0].read_text()


@pytest.mark.slow
def test_an_exploding_run_rolls_back_with_a_lower_learning_rate(tmp_path, corpus):
    """From the 15th step on every mel is 50 times louder: the loss jumps to many times its
    running median (divergence_factor=2 here) and remediate rolls back to the last checkpoint
    with the learning rate x 0.5, at most three times, then stops."""
    hp = _hparams(corpus, "divergence_factor=2,iters_per_checkpoint=2,iters_per_validation=100,"
                          "iters_per_log=5,red_flag_action=remediate")
    proc = _train_with_mels(tmp_path, hp, "mel = mel * 50 if calls[0] > 14 * 4 else mel",
                            "--max_steps=40")
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "red flag 5 (divergence)" in log and "running median" in log
    assert re.search(r"rolled back to \S+checkpoint_\d+ \(step \d+\), learning rate x0\.5", log)
    # three rollbacks at most; then it stops with the red-flag status
    assert proc.returncode in (0, train.EXIT_RED_FLAG)


# ---------------------------------------------------------------------------------- one trainer
@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_folder_exits_2(tmp_path, corpus):
    hp = _hparams(corpus, "iters_per_validation=5")
    first = subprocess.Popen(train_command(tmp_path, hp, "--max_steps=40"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lock = tmp_path / "output" / "trial_0" / ".trainer.lock"
    assert wait_for(lambda: lock.exists() and lock.read_text().strip() != "", proc=first)
    second = subprocess.run(train_command(tmp_path, hp, "--max_steps=40", log="logs2"),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out, err = first.communicate(timeout=300)
    assert second.returncode == train.EXIT_BAD_INPUT, second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert second.stderr.count("\n") == 1
    assert first.returncode == 0, err[-2000:]
    run = tmp_path / "output" / "trial_0"
    steps = [json.loads(line)["step"] for line in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]
    # the lock went with the first trainer: a third one may start
    _train(tmp_path, hp, "-c", str(run / "checkpoint_LATEST"), "--max_steps=41")


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--hparams=learning_rate=-1"], "hparam learning_rate=-1.0"),
    (["--hparams=max_steps=-5"], "hparam max_steps=-5"),
    (["--max_steps=-5"], "--max_steps -5: must be >= 0"),
    (["--hparams=learning_rate=1e400"], "hparam learning_rate=inf"),
    (["--hparams=learning_rate=1e38"], "hparam learning_rate=1e+38: must be at most 1"),
    (["--output_directory=/proc/taco_align_x"], "--output_directory /proc/taco_align_x"),
    (["--log_directory=/proc/taco_align_x"], "--log_directory /proc/taco_align_x"),
    (["--device=cuda:7"], "--device cuda:7"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, corpus, args, message):
    cmd = train_command(tmp_path, _hparams(corpus)) + args
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == train.EXIT_BAD_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_output_directory_that_is_a_file(tmp_path, corpus):
    (tmp_path / "taken").write_text("not a folder")
    cmd = train_command(tmp_path, _hparams(corpus)) + [f"--output_directory={tmp_path / 'taken'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == train.EXIT_BAD_INPUT
    assert "exists and is not a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"  # nothing written is lost


# ---------------------------------------------------------------------------------- curriculum
@pytest.mark.slow
def test_remediation_starts_the_curriculum_from_the_short_texts(tmp_path, corpus):
    """Flag 1 forced up at the first validation (step 5): the remediation's curriculum counts
    from step 5, so even with curriculum_steps=5 the next epoch offers only the short texts."""
    hp = _hparams(corpus, "red_flag_start_step=0,red_flag_diagonal=1.01,red_flag_action=remediate,"
                          "red_flag_patience=1000,curriculum_steps=5,curriculum_start_quantile=0.3,"
                          "iters_per_validation=5")
    _train(tmp_path, hp, "--max_steps=6")
    log = (tmp_path / "logs" / "train.log").read_text()
    match = re.search(r"curriculum: epoch (\d+) offers (\d+) texts", log)
    assert match, log[-3000:]
    assert int(match.group(2)) <= 0.5 * 18  # the short ~30%, not every text
    assert "Remediation" in log
