"""bench/device_check.sh --cpu-dry-run and bench/make_voice_pack.py: the GPU check's plumbing, on
a CPU.

The dry run takes every stage of the real check at tiny sizes (environment, the `cuda` tests -
all skipped here, throughput rows - one of them out of memory on purpose, one skipped by its
compile estimate - and the real-voice stage: two train.py steps of the tiny model and one
validation with free running on a pack that make_voice_pack.py builds from a few demo clips laid
out as a festvox voice) and must print its table and JSON line and leave three files under
$OUT. About 40 s of CPU time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "device_check.sh")
PACK_SCRIPT = os.path.join(ROOT, "bench", "make_voice_pack.py")


def _run(args, tmp_path, out=None, pack=None):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
               DEVICE_CHECK_VOICE_PACK=str(pack or tmp_path / "no_pack.tar"))
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)


def _festvox_voice(folder, n_clips=6):
    """The first Russian demo clips as a festvox voice: etc/txt.done.data and wav/<id>.wav."""
    (folder / "etc").mkdir(parents=True)
    (folder / "wav").mkdir()
    prompts = []
    with open(os.path.join(ROOT, "filelists", "demo_ru_train.txt"), encoding="utf-8") as f:
        for line in list(f)[:n_clips]:
            path, text = line.rstrip("\n").split("|", 1)
            uid = os.path.splitext(os.path.basename(path))[0]
            audio, sr = sf.read(os.path.join(ROOT, "filelists", path), dtype="int16")
            sf.write(folder / "wav" / f"{uid}.wav", audio, sr, subtype="PCM_16")
            prompts.append(f'( {uid} "{text}" )\n')
    (folder / "etc" / "txt.done.data").write_text("".join(prompts), encoding="utf-8")


@pytest.mark.slow
def test_cpu_dry_run_with_a_voice_pack_prints_table_and_json_and_keeps_three_files(tmp_path):
    voice, pack = tmp_path / "voice", tmp_path / "pack.tar"
    _festvox_voice(voice)
    built = subprocess.run(
        [sys.executable, PACK_SCRIPT, "--input", str(voice), "--out", str(pack), "--val_size",
         "2", "--copyright", str(tmp_path / "no_copyright")], capture_output=True, text=True,
        timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "6 clips" in built.stdout and "4 train, 2 validation" in built.stdout
    assert "log-mel mean squared difference" in built.stdout
    with tarfile.open(pack) as tar:
        names = sorted(tar.getnames())
        readme = tar.extractfile("festvox_ru/README.txt").read().decode()
        val = tar.extractfile("festvox_ru/val.txt").read().decode().splitlines()
    assert names[:3] == ["festvox_ru/README.txt", "festvox_ru/audio/ru_0001.ogg",
                         "festvox_ru/audio/ru_0003.ogg"]
    assert len([n for n in names if n.endswith(".ogg")]) == 6
    assert "MODIFIED COPIES" in readme and "no licence file at" in readme
    assert len(val) == 2 and all(line.startswith("audio/ru_") and ".ogg|" in line for line in val)

    out = tmp_path / "out"
    proc = _run(["--cpu-dry-run"], tmp_path, out, pack)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["bench"] == "device_check" and report["dry_run"] and report["ok"]
    assert report["out"] == str(out) and report["budget_s"] == 360

    table = "\n".join(lines[:-1])
    for row in ("stage / row", "environment", "cuda tests", "fp32 b2 r2 graphs",
                "fp32 b2 r2 eager", "real voice (festvox-ru)", "x NVIDIA (H200 figure): ",
                "target bf16 b128 r1 >= 150,000", "target bf16 b512 r1 >= 300,000"):
        assert row in table, row
    assert "not measured (dry run)" in table

    tests = report["cuda_tests"]  # collected and skipped without a GPU, and counted
    assert tests["status"] == "ok" and tests["skipped"] >= 10
    assert tests["passed"] == tests["failed"] == tests["errors"] == 0

    rows = report["throughput"]
    assert [r["name"] for r in rows] == ["fp32 b2 r2 graphs", "fp32 b2 r2 eager",
                                         "fp32 b2 r2 prenet 2^44 (OOM)",
                                         "fp32 b2 r2 graphs+compile"]
    assert [r["status"] for r in rows] == ["ok", "ok", "out of memory", "skipped"]
    assert all(r["real_frames_per_s"] > 0 and r["s_per_step"] > 0 and r["peak_mb"] > 0
               for r in rows[:2])
    assert [r["cuda_graphs"] for r in rows[:2]] == [True, False]
    assert "can't allocate memory" in rows[2]["error"]
    assert rows[3]["reason"].startswith("compile warm-up ~600 s (estimated) > remaining budget")
    assert "skipped: compile warm-up ~600 s" in table
    assert all(t["met"] is None and t["best"] is None for t in report["targets"].values())

    voice = report["voice"]
    assert voice["status"] == "ok" and voice["steps"] == 2 and voice["validations"] == 1
    assert (voice["train_clips"], voice["validation_clips"]) == (4, 2)
    assert voice["losses_finite"] and voice["steps_per_s"] > 0
    assert voice["free_running_items"] == 2
    for share in ("end_reached", "stopped", "near_length"):
        assert 0 <= voice[f"free_running_{share}_share"] <= 1, share

    assert sorted(os.listdir(out)) == ["device_check.json", "device_check.txt",
                                       "device_check_logs.tar.gz"]
    assert json.loads((out / "device_check.json").read_text()) == report
    assert (out / "device_check.txt").read_text().strip() == table
    with tarfile.open(out / "device_check_logs.tar.gz") as tar:
        logs = set(tar.getnames())
        records = tar.extractfile("logs/voice_run/diagnostics.jsonl").read().decode()
    for name in ("cuda_tests.xml", "cuda_tests.log", "bench/fp32_b2_r2_graphs.log",
                 "bench/fp32_b2_r2_prenet_2_44_oom.log", "voice_run/train.log",
                 "voice_run/hparams.json", "voice_run/step_2.npz"):
        assert f"logs/{name}" in logs, name
    assert [json.loads(r)["step"] for r in records.splitlines()] == [2]


def test_without_a_pack_the_voice_stage_says_so(tmp_path):
    out = tmp_path / "out"
    proc = _run(["--cpu-dry-run", "--only=voice"], tmp_path, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["stages"] == ["voice"] and report["ok"]
    assert report["cuda_tests"] == {"status": "not run"} and report["throughput"] == []
    assert report["voice"]["status"] == "skipped"
    assert report["voice"]["pack"] == str(tmp_path / "no_pack.tar")
    assert ("real voice (festvox-ru)        real-voice stage skipped: no pack "
            "(python bench/make_voice_pack.py)") in proc.stdout


def test_unknown_argument_or_stage_is_one_clear_error(tmp_path):
    proc = _run(["--gpu-please"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("device_check.sh: unknown argument '--gpu-please' "
                                   "(use --cpu-dry-run, --only=STAGES or --help)")
    proc = _run(["--only=rows,speed"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("device_check.sh: unknown stage 'speed' in --only "
                                   "(choose from tests, rows, voice)")


def test_make_voice_pack_without_a_voice_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, PACK_SCRIPT, "--input", str(tmp_path), "--out",
                           str(tmp_path / "pack.tar")], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and not (tmp_path / "pack.tar").exists()
    assert proc.stderr.strip() == (
        f"make_voice_pack.py: {tmp_path}: no festvox voice here (no etc/txt.done.data); install "
        f"it (sudo apt-get install festvox-ru) or unpack the package and point --input at its "
        f"msu_ru_nsh_clunits folder (docs/real_speech.md)")
