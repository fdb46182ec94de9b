"""bench/alignment_speed.py: the table and JSON from real tiny train.py runs, festvox-ru set-up."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import write_token_corpus
from run_files import ValidationRecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "alignment_speed.py")


def _bench_module():
    spec = importlib.util.spec_from_file_location("alignment_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_bench_on_a_filelist_prints_the_table_and_json(tmp_path):
    train, val = write_token_corpus(str(tmp_path / "corpus"), n_train=16, n_val=4)
    out = tmp_path / "bench"
    proc = _run("--preset", "tiny", "--training_files", train, "--validation_files", val,
                "--hparams", "text_cleaners=[basic_cleaners]", "--max_steps", "6",
                "--iters_per_validation", "3", "--threads", "1", "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["benchmark"] == "alignment_speed" and report["corpus"] is None
    assert f"training_files={train}" in report["hparams"]
    results = {r["run"]: r for r in report["results"]}
    assert sorted(results) == ["guided", "unguided"]
    head = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert lines[head].split()[:4] == ["run", "steps", "min", "TF>=0.3"]
    assert "target" in lines[head] and "FR stop ok" in lines[head]
    assert [lines[head + 1].split()[:2], lines[head + 2].split()[:2]] == [["guided", "6"],
                                                                          ["unguided", "6"]]
    for name, result in results.items():
        # the figures are those of the run's own diagnostics.jsonl
        records = [json.loads(x) for x in
                   (out / "output" / name / "diagnostics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [3, 6]
        assert result["steps"] == 6 and result["validations"] == 2
        assert result["fr_items"] == 4  # every validation item decoded from its text
        assert result["final_tf_diagonal"] == records[-1]["metrics"]["diagonal_score"]
        free = records[-1]["free_running"]
        assert result["final_fr_diagonal"] == free["diagonal_score"]
        assert result["final_fr_stopped_near_length"] == free["near_length_share"]
        assert result["final_fr_reading_diagonal"] == free.get("reading_diagonal_score")
        assert set(result["reach"]) == {f"{k}_{t}" for k in ("tf", "fr") for t in (0.3, 0.5, 0.7)}
    guided = json.loads((out / "output" / "guided" / "hparams.json").read_text())
    unguided = json.loads((out / "output" / "unguided" / "hparams.json").read_text())
    assert guided["guide_loss_weight"] > 0 and unguided["guide_loss_weight"] == 0
    assert (out / "alignment_speed.png").stat().st_size > 0


def _records():
    """Three validations: the FR target (>= 0.7, >= 80% stopping) is met at the third."""
    def record(step, tf, fr, near, minute, **extra):
        return {"step": step, "time": 1000.0 + 60 * minute, "metrics": {"diagonal_score": tf},
                "free_running": {"diagonal_score": fr, "near_length_share": near, "items": 10,
                                 "stopped_share": 1.0, **extra}}
    return [record(100, 0.4, 0.1, 0.0, 2.0), record(200, 0.8, 0.75, 0.5, 4.5),
            record(300, 0.9, 0.72, 0.9, 7.0, reading_diagonal_score=0.8, runs_on=1)]


def _read(records):
    """Records as the bench reads them from a run folder."""
    return [ValidationRecord.from_dict(r) for r in records]


def test_summary_reach_target_and_reading_column():
    bench = _bench_module()
    run = {"name": "guided", "started": 1000.0, "finished": 1000.0 + 60 * 7.5,
           "records": _read(_records())}
    result = bench.summarise(run)
    assert result["reach"]["tf_0.3"] == {"step": 100, "minutes": 2.0}
    assert result["reach"]["tf_0.7"] == {"step": 200, "minutes": 4.5}
    assert result["reach"]["fr_0.3"] == {"step": 200, "minutes": 4.5}
    assert result["target"] == {"step": 300, "minutes": 7.0}  # 200 had only 50% stopping
    assert result["final_fr_reading_diagonal"] == 0.8 and result["final_fr_reading_runs_on"] == 1
    assert result["best_fr_diagonal"] == 0.75 and result["best_fr_stopped_near_length"] == 0.9
    text = bench.table([result])
    head, row = text.splitlines()
    assert "FR reading" in head
    assert row.split() == (["guided", "300", "7.0", "100", "/", "2.0m"]  # TF>=0.3
                           + ["200", "/", "4.5m"] * 5  # TF>=0.5, 0.7, FR>=0.3, 0.5, 0.7
                           + ["300", "/", "7.0m", "0.90", "0.72", "0.80", "90%", "0.75"])
    # records of trainers without the reading-only figure: the whole map's stands in
    plain = [dict(r, free_running={k: v for k, v in r["free_running"].items()
                                   if k not in ("reading_diagonal_score", "runs_on")})
             for r in _records()]
    assert bench.summarise(dict(run, records=_read(plain)))["final_fr_reading_diagonal"] == 0.72
    # an unguided run that never aligned
    never = bench.summarise({"name": "unguided", "started": 0.0, "finished": 60.0,
                             "records": _read([
        {"step": 100, "time": 30.0, "metrics": {"diagonal_score": 0.0}, "free_running": None}])})
    assert never["target"] is None and never["final_fr_diagonal"] is None
    # a record without target lengths holds near_length_share null
    unknown = _records()[2]
    unknown["free_running"]["near_length_share"] = None
    nulls = bench.summarise({"name": "x", "started": 1000.0, "finished": 2000.0,
                             "records": _read([unknown])})
    assert nulls["target"] is None and nulls["best_fr_stopped_near_length"] == 0.0
    assert nulls["final_fr_stopped_near_length"] is None
    assert bench.table([never]).splitlines()[1].split()[3:] == ["-"] * 7 + ["0.00", "-", "-", "-"]


def _festvox_voice(root: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(["Она завела, прядь вол+ос.", "+Окна домов.", "Скайлс ждал.",
                              "Шла через улицу."]):
        uid = f"ru_{i + 1:04d}"
        (root / "wav").mkdir(parents=True, exist_ok=True)
        sf.write(root / "wav" / f"{uid}.wav",
                 (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000, subtype="PCM_16")
        lines.append(f'( {uid} "{text}" )')
    (root / "etc").mkdir()
    (root / "etc" / "txt.done.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_festvox_corpus_is_prepared_once_then_reused(tmp_path):
    bench = _bench_module()
    voice = _festvox_voice(tmp_path / "msu_ru_nsh_clunits")
    args = bench.parse_args(["--corpus", "festvox-ru", "--corpus_dir", str(voice),
                             "--output_dir", str(tmp_path / "bench")])
    shared = bench.base_hparams(args)
    assert shared[0] == "preset=demo_ru"  # the Russian twin of the demo preset
    hp = bench.check_hparams(shared)
    overrides = bench.corpus_hparams(args, hp)
    folder = tmp_path / "bench" / "data" / "festvox_ru_22050hz_0.3-20s"
    assert overrides == [f"training_files={folder / 'train.txt'}",
                         f"validation_files={folder / 'val.txt'}"]
    rows = [line.split("|") for name in ("train.txt", "val.txt")
            for line in (folder / name).read_text(encoding="utf-8").splitlines()]
    assert sorted(text for _, text in rows)[0] == "+Окна домов."  # the stress mark kept
    assert {sf.info(folder / path).samplerate for path, _ in rows} == {22050}
    marker = folder / "prepared.json"
    stamp = marker.stat().st_mtime_ns
    (folder / "train.txt").write_text("kept|as it is\n", encoding="utf-8")
    assert bench.corpus_hparams(args, hp) == overrides  # reused, not prepared again
    assert marker.stat().st_mtime_ns == stamp
    assert (folder / "train.txt").read_text(encoding="utf-8") == "kept|as it is\n"
    # other preparation settings in the same folder (trim_top_db) prepare it again
    louder = bench.check_hparams(shared + ["trim_top_db=30"])
    assert bench.corpus_hparams(args, louder) == overrides
    assert (folder / "train.txt").read_text(encoding="utf-8") != "kept|as it is\n"
    # another sample rate is another folder
    other = bench.check_hparams(shared + ["sampling_rate=16000"])
    assert "festvox_ru_16000hz_0.3-20s" in bench.corpus_hparams(args, other)[0]
    # a preset without a Russian twin gets the Russian text set as overrides
    tiny = bench.base_hparams(bench.parse_args(["--corpus", "festvox-ru", "--preset", "tiny"]))
    assert tiny[:3] == ["preset=tiny", "text_cleaners=[russian_cleaners]", "symbol_set=russian"]


@pytest.mark.parametrize("args, message", [
    (["--corpus", "festvox-ru", "--corpus_dir", "{tmp}/nowhere"],
     "alignment_speed: error: {tmp}/nowhere: no festvox-ru voice here (etc/txt.done.data "
     "missing); install it (apt-get install festvox-ru) or point --corpus_dir at an unpacked "
     "copy"),
    (["--training_files", "{tmp}/train.txt"],
     "alignment_speed: error: --training_files and --validation_files go together"),
    (["--training_files", "{tmp}/train.txt", "--validation_files", "{tmp}/val.txt"],
     "alignment_speed: error: {tmp}/train.txt: no such filelist"),
    (["--hparams", "no_such_name=1"],
     "alignment_speed: error: --hparams: unknown hparam 'no_such_name'"),
    (["--runs", "both"], "alignment_speed: error: --runs 'both': choose guided and/or unguided"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = _run(*args, "--output_dir", str(tmp_path / "bench"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message.replace("{tmp}", str(tmp_path)))
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
