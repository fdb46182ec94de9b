"""The trainer watches its own attention: learning with guidance, milestones, red flags, data check.

These run the real training loop in-process on a generated corpus in which every letter is a
distinct sound (helpers.write_token_corpus), so alignment is learnable in a few seconds.
"""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import train
from helpers import write_token_corpus

FAST = ("preset=tiny,text_cleaners=[basic_cleaners],learning_rate=3e-3,n_frames_per_step=2,"
        "batch_size=8,iters_per_log=1000,iters_per_checkpoint=1000,free_running_every=0")


def _run(tmp_path, corpus, extra, run_name="trial_0", *more):
    train_list, val_list = corpus
    hparams = f"{FAST},training_files={train_list},validation_files={val_list},{extra}"
    status = train.main([f"--output_directory={tmp_path / 'output'}",
                         f"--log_directory={tmp_path / 'logs' / run_name}",
                         f"--tensorboard_directory={tmp_path / 'runs'}",
                         f"--run_name={run_name}", f"--hparams={hparams}", *more])
    run_dir = tmp_path / "output" / run_name
    records = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").read_text().splitlines()] \
        if (run_dir / "diagnostics.jsonl").exists() else []
    log = (tmp_path / "logs" / run_name / "train.log").read_text()
    return status, records, log, run_dir


@pytest.fixture(scope="module")
def aligned_corpus(tmp_path_factory):
    return write_token_corpus(str(tmp_path_factory.mktemp("tokens")), n_train=64, n_val=8,
                              min_len=4, max_len=10)


@pytest.fixture(scope="module")
def shuffled_corpus(tmp_path_factory):
    return write_token_corpus(str(tmp_path_factory.mktemp("shuffled")), n_train=32, n_val=8,
                              shuffle_text=True, seed=3)


@pytest.mark.slow
def test_guided_attention_learns_alignment(tmp_path, aligned_corpus):
    """With guidance the validation diagonality passes 0.5; without it, it stays far lower."""
    common = "max_steps=100,iters_per_validation=20,success_steps=[20,60],success_thresholds=[0.1,0.5]"
    status, guided, log, run_dir = _run(tmp_path, aligned_corpus, common, "guided")
    assert status == 0
    _, plain, _, _ = _run(tmp_path, aligned_corpus, common + ",guide_loss_weight=0", "plain")
    on = guided[-1]["metrics"]["diagonal_score"]
    off = plain[-1]["metrics"]["diagonal_score"]
    assert guided[-1]["step"] == plain[-1]["step"] == 100
    assert on > 0.5, [r["metrics"]["diagonal_score"] for r in guided]
    assert on > off + 0.3, (on, off)
    # milestones: logged once each, in train.log and diagnostics.jsonl
    milestones = [r["milestone"] for r in guided if r["milestone"]]
    assert [m["step"] for m in milestones] == [20, 60]
    assert "criterion step 60: diagonality" in log
    last_line = [l for l in log.splitlines() if "criterion step 60" in l][0]
    assert last_line.endswith("PASS") == milestones[1]["passed"]
    # snapshots hold the maps with their lengths, for alignment_diagnostics.py --step=N
    snap = np.load(run_dir / "alignments" / "step_100.npz")
    assert snap["alignments"].shape[0] == 8 == len(snap["text_lengths"])
    assert int(snap["n_frames_per_step"]) == 2
    assert np.all(snap["decoder_lengths"] == (snap["mel_lengths"] + 1) // 2)


@pytest.mark.slow
def test_red_flags_remediate_then_stop(tmp_path, shuffled_corpus):
    """Text shuffled against audio and guidance with no grip: remediate once, then stop (3)."""
    extra = ("max_steps=400,iters_per_validation=10,red_flag_start_step=20,red_flag_patience=30,"
             "guide_scale=0.001,guide_lowbound=0.001,success_steps=[10,20],"
             "success_thresholds=[0.3,0.5]")
    status, records, log, run_dir = _run(tmp_path, shuffled_corpus, extra)
    assert status == train.EXIT_RED_FLAG
    assert "Remediation: guide_loss_weight 2.0 -> 5.0, curriculum on" in log
    assert log.count("Remediation:") == 1
    assert "curriculum: epoch" in log  # the cap is logged once curriculum is on
    assert "RED FLAG STOP" in log and "guide_loss_weight=5.0" in log and "check_data.py" in log
    stop_step = records[-1]["step"]
    assert stop_step >= 20 + 30
    assert records[-1]["red_flags"] and records[-1]["remediated"]
    report = run_dir / f"red_flag_report_step_{stop_step}.txt"
    assert report.exists() and "diagonal" in report.read_text().lower()
    ckpt = torch.load(run_dir / f"checkpoint_{stop_step}", weights_only=True)
    assert ckpt["hparams"]["guide_loss_weight"] == 5.0 and ckpt["hparams"]["curriculum"] is True
    assert ckpt["extra"]["guard"]["remediated_at"] == 20


@pytest.mark.slow
@pytest.mark.parametrize("action, expected_status", [("warn", 0), ("stop", train.EXIT_RED_FLAG)])
def test_red_flag_actions(tmp_path, shuffled_corpus, action, expected_status):
    extra = (f"max_steps=40,iters_per_validation=10,red_flag_start_step=20,red_flag_action={action},"
             "guide_scale=0.001,guide_lowbound=0.001,success_steps=[10],success_thresholds=[0.5]")
    status, records, log, _ = _run(tmp_path, shuffled_corpus, extra)
    assert status == expected_status
    if action == "warn":
        assert records[-1]["step"] == 40 and "red flag" in log and "Remediation" not in log
    else:
        assert records[-1]["step"] == 20 and "RED FLAG STOP" in log


def test_data_check_refuses_missing_and_wrong_rate(tmp_path):
    train_list, val_list = write_token_corpus(str(tmp_path / "data"), n_train=6, n_val=2)
    folder = tmp_path / "data"
    sf.write(folder / "wavs" / "rate.wav", np.zeros(44100, np.float32), 44100, subtype="PCM_16")
    with open(train_list, "a", encoding="utf-8") as f:
        f.write("wavs/missing.wav|abc\nwavs/rate.wav|abc\n")
    status, _, log, run_dir = _run(tmp_path, (train_list, val_list), "max_steps=2")
    assert status == train.EXIT_BAD_INPUT
    assert "train.txt:7" in log and "missing.wav" in log
    assert "train.txt:8" in log and "44100" in log
    assert not list(run_dir.glob("checkpoint_*"))
    # --skip_data_check lets the user start anyway (here the dataset itself then refuses)
    status, _, log, _ = _run(tmp_path, (train_list, val_list), "max_steps=2", "trial_0",
                             "--skip_data_check")
    assert status == train.EXIT_BAD_INPUT
