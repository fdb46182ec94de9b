"""bench/long_texts.py runs on a real (tiny) checkpoint and prints its table and JSON line."""
import json
import os
import subprocess
import sys

import pytest

from helpers import write_token_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # trains its checkpoint with train.py
def test_long_texts_bench_on_a_tiny_checkpoint(tmp_path):
    train_list, val_list = write_token_corpus(str(tmp_path), n_train=8, n_val=3)
    hparams = (f"preset=tiny,training_files={train_list},validation_files={val_list},"
               f"text_cleaners=[basic_cleaners],max_steps=2,iters_per_validation=2")
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "-o", str(tmp_path / "out"),
                    "-l", str(tmp_path / "logs"), "--tensorboard_directory",
                    str(tmp_path / "runs"), f"--hparams={hparams}"], check=True,
                   capture_output=True, cwd=tmp_path, timeout=300)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "long_texts.py"), "-c",
                           str(tmp_path / "out" / "trial_0" / "checkpoint_LATEST"),
                           "--n_texts", "2", "--factors", "2", "--windows", "0,3",
                           "--threads", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["factor"], r["window"]) for r in out["rows"]] == [(2.0, 0), (2.0, 3)]
    for row in out["rows"]:
        assert row["texts"] == 2 and row["chars"] >= 2 * out["longest_training_text"] - 2
        assert 0.0 <= row["reading_diagonal"] <= 1.0 and 0.0 <= row["end_reached"] <= 1.0
    assert "reading diag" in proc.stdout


def test_long_texts_bench_bad_checkpoint_is_one_line(tmp_path):
    (tmp_path / "ckpt").write_bytes(b"nonsense")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "long_texts.py"), "-c",
                           str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not a PyTorch checkpoint" in proc.stderr
