"""torchrun + DistributedDataParallel on CPU (Gloo), and mixed precision through the real loop."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import train
from helpers import write_token_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hparams(train_list, val_list, extra):
    return (f"preset=tiny,training_files={train_list},validation_files={val_list},"
            f"text_cleaners=[basic_cleaners],{extra}")


@pytest.mark.slow
def test_torchrun_two_ranks_then_resume_single_process(tmp_path):
    train_list, val_list = write_token_corpus(str(tmp_path / "data"), n_train=16, n_val=4)
    common = [f"--output_directory={tmp_path / 'output'}", f"--log_directory={tmp_path / 'logs'}",
              f"--tensorboard_directory={tmp_path / 'runs'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *common,
           f"--hparams={_hparams(train_list, val_list, 'max_steps=4,iters_per_validation=2,iters_per_checkpoint=2')}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "output" / "trial_0"
    log = (tmp_path / "logs" / "train.log").read_text()
    # rank 0 alone writes: one banner, one line per step, one event file, one record per validation
    assert log.count("taco-align training:") == 1 and "world size 2" in log
    assert sum(1 for l in log.splitlines() if " step 3: total" in l) == 1
    assert len(os.listdir(tmp_path / "runs" / "trial_0")) == 1
    records = [json.loads(l) for l in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    ckpt = torch.load(run / "checkpoint_4", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    # the DDP checkpoint resumes in a single process
    status = train.main([*common, "-c", str(run / "checkpoint_LATEST"), "--max_steps=6"])
    assert status == 0
    assert torch.load(run / "checkpoint_6", weights_only=True)["iteration"] == 6


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_trains_with_finite_losses(tmp_path, precision):
    train_list, val_list = write_token_corpus(str(tmp_path / "data"), n_train=8, n_val=4)
    status = train.main([f"--output_directory={tmp_path / 'output'}",
                         f"--log_directory={tmp_path / 'logs'}",
                         f"--tensorboard_directory={tmp_path / 'runs'}",
                         f"--hparams={_hparams(train_list, val_list, f'max_steps=3,iters_per_validation=3,precision={precision}')}"])
    assert status == 0
    record = json.loads((tmp_path / "output" / "trial_0" / "diagnostics.jsonl").read_text())
    assert all(math.isfinite(v) for v in record["losses"].values())
    log = (tmp_path / "logs" / "train.log").read_text()
    assert "precision bf16" in log and "non-finite" not in log
