"""train.py through its real CLI: run files, logs, TensorBoard tags, resume, SIGTERM, warm start.

Every test here starts `python train.py`: all are `slow`.
"""
import json
import re
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, corpus_hparams, train_command, wait_for, write_token_corpus

pytestmark = pytest.mark.slow


def _train(tmp_path, hparams, *more, check=True, timeout=300):
    proc = subprocess.run(train_command(tmp_path, hparams, *more), capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_token_corpus(str(folder), n_train=16, n_val=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    tmp_path = tmp_path_factory.mktemp("run")
    _train(tmp_path, corpus_hparams(*corpus, "max_steps=10,keep_checkpoints=0"))
    return tmp_path


def test_run_layout(trained):
    run = trained / "output" / "trial_0"
    assert (run / "checkpoint_5").is_file() and (run / "checkpoint_10").is_file()
    assert os.path.realpath(run / "checkpoint_LATEST").endswith("checkpoint_10")
    hp = json.loads((run / "hparams.json").read_text())
    assert hp["preset"] == "tiny" and hp["max_steps"] == 10
    log = (trained / "logs" / "train.log").read_text()
    assert "step 10:" in log and "attention_loss" in log and "guided_weight" in log
    assert "validation step 10" in log
    records = [json.loads(l) for l in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert 0.0 <= records[-1]["metrics"]["diagonal_score"] <= 1.0
    assert records[-1]["guided_weight"] > 0
    # speech quality at the first free-running validation (then every iters_per_quality-th),
    # with the recordings' own references beside it
    quality = records[0]["quality"]
    assert quality["mean_mcd"] > 0 and len(quality["mcd"]) == 2
    refs = quality["references"]
    assert refs["self_mcd"] == 0 and 0 <= refs["griffin_lim_mcd"] < refs["flat_mcd"]
    assert "quality" not in records[1]
    assert re.search(r"quality step 5: MCD \d+\.\d+ dB over 2 items \(recordings' Griffin-Lim "
                     r"\d+\.\d+ dB, hum \d+\.\d+ dB\)", log)
    assert "step 5: aligned no; understood" in log
    snap = torch.from_numpy(__import__("numpy").load(run / "alignments" / "step_10.npz")["alignments"])
    assert snap.dim() == 3 and snap.shape[0] == 4


def test_speech_quality_is_scored_at_every_milestone(tmp_path, corpus):
    # quality every 5th validation, but the milestone at step 10 (the 2nd validation) is
    # judged with the speech beside it
    _train(tmp_path, corpus_hparams(*corpus, "max_steps=10,iters_per_quality=5,"
                                             "success_steps=[10],success_thresholds=[0.1]"))
    records = [json.loads(l) for l in
               (tmp_path / "output" / "trial_0" / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    milestone = records[1]["milestone"]
    assert milestone["step"] == 10
    assert milestone["mcd"] == pytest.approx(records[1]["quality"]["mean_mcd"])
    log = (tmp_path / "logs" / "train.log").read_text()
    assert re.search(r"criterion step 10: diagonality \d\.\d\d .*; speech: MCD \d+\.\d+ dB over "
                     r"2 items \(recordings' Griffin-Lim \d+\.\d+ dB, hum \d+\.\d+ dB\)", log)


def test_tensorboard_tags(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder = trained / "runs" / "trial_0"
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("training.loss", "grad.norm", "learning.rate", "duration.seconds_per_step",
                "validation.loss", "training.attention_loss", "training.guided_weight",
                "alignment.diagonal_score", "alignment.focus_score", "alignment.coverage",
                "alignment_free.diagonal_score", "alignment_free.reading_diagonal_score",
                "alignment_free.runs_on_share", "quality.mcd_db", "quality.mcd_hum_db",
                "quality.mcd_griffin_lim_db"):
        assert tag in scalars, tag
    images = set(acc.Tags()["images"])
    for tag in ("alignment", "mel_target", "mel_predicted", "gate"):
        assert tag in images, tag
    # one scheme: NVIDIA's dotted group.name everywhere, no slash-grouped stragglers
    assert not [tag for tag in scalars if "/" in tag]
    # a sample to listen to from the first validation on, not after iters_per_audio of them
    assert acc.Tags()["audio"] == ["audio_predicted"]
    assert acc.Audio("audio_predicted")[0].step == 5


def test_checkpoint_loads_weights_only(trained):
    ckpt = torch.load(trained / "output" / "trial_0" / "checkpoint_10", weights_only=True)
    assert ckpt["iteration"] == 10
    assert ckpt["hparams"]["preset"] == "tiny"


def test_resume_continues_step_lr_and_weight(tmp_path, trained, corpus):
    import shutil
    shutil.copytree(trained / "output", tmp_path / "output")
    latest = tmp_path / "output" / "trial_0" / "checkpoint_LATEST"
    before = torch.load(latest, weights_only=True)
    proc = _train(tmp_path, "", "-c", str(latest), "--max_steps=15")
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "resumed from" in log and "at step 10" in log
    after = torch.load(tmp_path / "output" / "trial_0" / "checkpoint_15", weights_only=True)
    assert after["iteration"] == 15
    assert after["learning_rate"] == pytest.approx(before["learning_rate"])
    assert "step 11:" in log and "step 1:" not in log.split("resumed from")[1]
    # the guided weight logged at step 11 is the schedule's value at step 11, not at step 1
    from hparams import HParams
    from loss_function import guided_attention_weight
    w11 = guided_attention_weight(11, HParams.from_dict(after["hparams"]))
    line = [l for l in log.splitlines() if "step 11:" in l][0]
    assert f"guided_weight {w11:.4g}" in line


def _wait_for_log(log, text, proc):
    """Waits (up to two minutes) until the trainer's log shows `text`."""
    assert wait_for(lambda: log.exists() and text in log.read_text(), proc=proc), text


def test_sigterm_leaves_loadable_checkpoint(tmp_path, corpus):
    hparams = corpus_hparams(*corpus, "max_steps=100000,iters_per_checkpoint=100000,"
                                      "iters_per_validation=100000")
    cmd = train_command(tmp_path, hparams)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    log = tmp_path / "logs" / "train.log"
    _wait_for_log(log, "step 3:", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    text = log.read_text()
    saved = [l for l in text.splitlines() if "stopped by signal" in l]
    assert saved, text[-2000:]
    ckpt = torch.load(tmp_path / "output" / "trial_0" / "checkpoint_LATEST", weights_only=True)
    assert ckpt["iteration"] >= 3
    assert f"at step {ckpt['iteration']}" in saved[0]


def test_warm_start_cli(tmp_path, corpus):
    from hparams import create_hparams
    from model import Tacotron2
    hp = create_hparams("preset=tiny")
    torch.save({"state_dict": Tacotron2(hp).state_dict()}, tmp_path / "nvidia.pt")
    _train(tmp_path, corpus_hparams(*corpus, "max_steps=2"), "-c", str(tmp_path / "nvidia.pt"),
           "--warm_start")
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "warm start from" in log and "embedding.weight" in log
    assert torch.load(tmp_path / "output" / "trial_0" / "checkpoint_2",
                      weights_only=True)["iteration"] == 2


@pytest.mark.parametrize("hparams, message", [
    ("no_such_hparam=1", "unknown hparam 'no_such_hparam'"),
    ("batch_size=many", "bad value for hparam batch_size"),
])
def test_bad_hparams_exit_2(tmp_path, hparams, message):
    proc = _train(tmp_path, hparams, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_missing_resume_checkpoint_exit_2(tmp_path):
    proc = _train(tmp_path, "preset=tiny", "-c", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr


def _diagnostics(cwd, *args):
    cmd = [sys.executable, os.path.join(ROOT, "alignment_diagnostics.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_diagnostics_on_the_training_run(tmp_path, trained):
    """The user's monitoring commands, on checkpoints and snapshots of a real run."""
    import shutil
    shutil.copytree(trained / "output", tmp_path / "output")
    run = tmp_path / "output" / "trial_0"
    os.remove(run / "checkpoint_5")  # step 5 now exists only as a snapshot
    for args in (["--step=10"], ["--step=5"], [],
                 ["--checkpoint=output/trial_0/checkpoint_LATEST"]):
        proc = _diagnostics(tmp_path, *args, "--json")
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        result = json.loads(proc.stdout)
        assert result["step"] == (5 if args == ["--step=5"] else 10)
        assert 0.0 <= result["diagnostics"]["diagonal_score"] <= 1.0
        assert os.path.exists(os.path.join(tmp_path, result["plot_path"]))
    proc = _diagnostics(tmp_path, "--step=7")
    assert proc.returncode == 2 and "5" in proc.stderr and "10" in proc.stderr
    proc = _diagnostics(tmp_path, "--history", "--no-plot")
    assert proc.returncode == 0 and "10" in proc.stdout
    snippet = ("from alignment_diagnostics import analyze_current_alignment; "
               "r = analyze_current_alignment(step=10); print(r['diagnostics']['diagonal_score'])")
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.0 <= float(proc.stdout.strip().splitlines()[-1]) <= 1.0


def test_resume_with_another_model_size_is_one_line_error(tmp_path, trained):
    latest = trained / "output" / "trial_0" / "checkpoint_LATEST"
    proc = _train(tmp_path, "decoder_rnn_dim=48", "-c", str(latest), check=False)
    assert proc.returncode == 2
    assert "do not fit the model" in proc.stderr and "Traceback" not in proc.stderr


def test_validation_line_parts_add_up_to_the_total(trained):
    """Every part of the total is shown (the postnet term included) and they add up."""
    log = (trained / "logs" / "train.log").read_text()
    pattern = re.compile(r"validation step \d+: loss ([\d.]+) = mel ([\d.]+) \+ postnet ([\d.]+) "
                         r"\+ gate ([\d.]+) \+ guided_weight ([\d.e+-]+) x attention_loss ([\d.]+)")
    lines = pattern.findall(log)
    assert len(lines) == 2, log[-2000:]
    for total, mel, postnet, gate, weight, attention in lines:
        parts = float(mel) + float(postnet) + float(gate) + float(weight) * float(attention)
        assert abs(parts - float(total)) < 2e-3 * max(1.0, float(weight)), (total, parts)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_with_workers_saves_and_exits(tmp_path, corpus, signum):
    """Ctrl-C, `timeout` and schedulers signal every process of the group, DataLoader workers
    included: the trainer still finishes its step, saves and exits 128+signal, no traceback."""
    hparams = corpus_hparams(*corpus, "num_workers=2,max_steps=100000,iters_per_checkpoint=100000,"
                                      "iters_per_validation=100000")
    cmd = train_command(tmp_path, hparams)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True)
    log = tmp_path / "logs" / "train.log"
    _wait_for_log(log, "step 3:", proc)
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, out[-2000:] + err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    ckpt = torch.load(tmp_path / "output" / "trial_0" / "checkpoint_LATEST", weights_only=True)
    assert ckpt["iteration"] >= 3



def test_gradual_training_lowers_r_and_resumes(tmp_path, corpus):
    """reduce_r_to: at the first validation from reduce_r_step the run continues with r=1 (the
    log says so); its checkpoints carry r=1 and resume as they are."""
    hp = corpus_hparams(*corpus, "n_frames_per_step=3,reduce_r_to=1,reduce_r_step=4,"
                                 "iters_per_validation=2,iters_per_checkpoint=3,iters_per_quality=0")
    _train(tmp_path, hp, "--max_steps=8")
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "step 4: reduction factor 3 -> 1 (n_frames_per_step), weights and optimizer carried" in log
    run = tmp_path / "output" / "trial_0"
    assert torch.load(run / "checkpoint_3", weights_only=True)["hparams"]["n_frames_per_step"] == 3
    ckpt = torch.load(run / "checkpoint_8", weights_only=True)
    assert ckpt["hparams"]["n_frames_per_step"] == 1
    assert json.loads((run / "hparams.json").read_text())["n_frames_per_step"] == 1
    _train(tmp_path, hp, "-c", str(run / "checkpoint_LATEST"), "--max_steps=10")
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "finished at step 10" in log and log.count("reduction factor 3 -> 1") == 1
