"""alignment_diagnostics.py as the user runs it: sources, reports, plots, errors, exit codes.

Run folders are written into tmp_path in the documented layout (alignments/step_N.npz,
diagnostics.jsonl, hparams.json); most tests call `main(argv)` in-process, a few go through a
subprocess like the user.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import alignment_diagnostics as diag
from hparams import create_hparams

from test_alignment_metrics import (hard_diagonal, horizontal_band, realistic_diagonal, uniform,
                                    with_hold)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CYRILLIC = re.compile(r"[а-яА-ЯёЁ]")


# ---------------------------------------------------------------------------- run folders
def write_snapshot(run_dir, step, maps, r=1, free=None, names=True):
    """alignments/step_<step>.npz exactly as docs/run_layout.md describes it."""
    folder = os.path.join(run_dir, "alignments")
    os.makedirs(folder, exist_ok=True)
    max_t = max(a.shape[0] for a in maps) + 3
    max_n = max(a.shape[1] for a in maps) + 2
    padded = np.zeros((len(maps), max_t, max_n), np.float32)
    for i, a in enumerate(maps):
        padded[i, : a.shape[0], : a.shape[1]] = a
    decoder_lengths = np.array([a.shape[0] for a in maps], np.int64)
    arrays = dict(alignments=padded, text_lengths=np.array([a.shape[1] for a in maps], np.int64),
                  decoder_lengths=decoder_lengths, mel_lengths=decoder_lengths * r,
                  step=np.int64(step), n_frames_per_step=np.int64(r), hop_length=np.int64(256),
                  sampling_rate=np.int64(22050))
    if names:
        arrays["names"] = np.array([f"LJ001-{i:04d}.wav" for i in range(len(maps))])
    if free is not None:
        fmax_t = max(a.shape[0] for a in free)
        fmax_n = max(a.shape[1] for a in free)
        fpad = np.zeros((len(free), fmax_t, fmax_n), np.float32)
        for i, a in enumerate(free):
            fpad[i, : a.shape[0], : a.shape[1]] = a
        arrays.update(free_alignments=fpad,
                      free_text_lengths=np.array([a.shape[1] for a in free], np.int64),
                      free_decoder_lengths=np.array([a.shape[0] for a in free], np.int64),
                      free_hit_max_steps=np.array([i == len(free) - 1 for i in range(len(free))]),
                      free_names=np.array([f"LJ002-{i:04d}.wav" for i in range(len(free))]))
    path = os.path.join(folder, f"step_{step}.npz")
    np.savez_compressed(path, **arrays)
    return path


def write_log(run_dir, records):
    with open(os.path.join(run_dir, "diagnostics.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def log_record(step, diagonal, guided_term=0.3, flags=(), n_items=4, free=None, hp=None):
    hp = hp or create_hparams()
    return {"step": step, "time": 0.0,
            "losses": {"total": 1.0, "mel": 0.5, "mel_postnet": 0.4, "gate": 0.1,
                       "guided_attn": 0.05},
            "guided_weight": 2.0, "guided_term": guided_term, "learning_rate": 5e-4,
            "metrics": {"diagonal_score": diagonal, "focus_score": 0.6, "max_attention": 0.9,
                        "coverage": 0.9, "monotonic_score": 0.95, "end_reached": 0.9,
                        "entropy": 0.2},
            "failure_counts": {"healthy": n_items}, "n_items": n_items,
            "criterion": diag.criterion_for_step(step, hp, diagonal),
            "milestone": None, "red_flags": [{"id": i, "name": "x", "message": "y"}
                                              for i in flags],
            "free_running": free, "remediated": False}


def good_maps():
    return [realistic_diagonal(300, 80, 0), realistic_diagonal(120, 37, 1),
            realistic_diagonal(200, 60, 2), hard_diagonal(91, 30)]


def band_maps():
    return [horizontal_band(200, 60, 0), horizontal_band(150, 40, 20),
            horizontal_band(120, 30, 0), uniform(120, 37)]


@pytest.fixture
def run(tmp_path):
    """output/trial_0 with snapshots at steps 200 and 1200 and the run's hparams.json."""
    run_dir = tmp_path / "output" / "trial_0"
    run_dir.mkdir(parents=True)
    (run_dir / "hparams.json").write_text(create_hparams().to_json())
    write_snapshot(run_dir, 200, [uniform(100, 30)] * 2)
    write_snapshot(run_dir, 1200, good_maps())
    return run_dir


def run_main(capsys, *argv):
    code = diag.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_png(path, min_kb=10):
    import matplotlib.image

    assert os.path.isfile(path), path
    assert os.path.getsize(path) > min_kb * 1024
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # not a single colour


def out_dir(run_dir):
    return ["--output_directory", run_dir.parent]


# ---------------------------------------------------------------------------- sources
def test_alignment_npy_report(tmp_path, capsys):
    path = tmp_path / "attention.npy"
    np.save(path, realistic_diagonal(240, 70))
    code, out, err = run_main(capsys, "--alignment", path)
    assert code == 0, err
    assert "Source: attention matrix" in out
    assert re.search(r"diagonality \(diagonal_score\)\s+(0\.9\d\d|1\.000)", out)
    assert re.search(r"healthy\s+1/1", out)
    assert "step unknown: success criteria and red flags are not judged" in out
    assert "not judged (step unknown)" in out
    assert_png(tmp_path / "attention_diagnostics.png")


def test_alignment_npy_with_a_step_is_judged(tmp_path, capsys):
    path = tmp_path / "attention.npy"
    np.save(path, realistic_diagonal(240, 70))
    code, out, _ = run_main(capsys, "--alignment", path, "--step", 3400, "--json", "--no-plot")
    result = json.loads(out)
    assert code == 0
    assert result["step"] == 3400 and result["criterion"]["step"] == 3000
    assert result["criterion"]["passed"] is True and result["plot_path"] is None


def test_alignment_npz_snapshot_in_a_run(run, capsys):
    code, out, err = run_main(capsys, "--alignment", run / "alignments" / "step_1200.npz",
                              "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["source"]["kind"] == "snapshot"
    assert result["step"] == 1200 and result["n_items"] == 4
    assert result["hparams_source"] == "run"
    assert result["plot_path"] == str(run / "diagnostics" / "step_1200.png")
    assert_png(result["plot_path"])


def test_step_reads_the_snapshot(run, capsys):
    code, out, err = run_main(capsys, "--step=1200", *out_dir(run))
    assert code == 0, err
    assert "Alignment diagnostics, step 1200" in out
    assert "milestone step 1000: diagonality > 10%" in out and "PASS" in out
    assert "next milestone: diagonality > 30% at step 3000" in out
    assert "not checked before step 2000" in out
    assert "On track" in out
    assert_png(run / "diagnostics" / "step_1200.png")


def test_step_json_has_the_documented_keys(run, capsys):
    code, out, _ = run_main(capsys, "--step", 1200, "--json", "--no-plot", *out_dir(run))
    result = json.loads(out)
    for key in ("step", "diagnostics", "criterion", "red_flags", "problems", "recommendations",
                "plot_path", "failure_counts", "items", "next_milestone"):
        assert key in result, key
    assert set(diag.METRIC_NAMES) <= set(result["diagnostics"])
    assert result["diagnostics"]["diagonal_score"] > 0.8
    assert result["problems"] == {}
    assert [r["id"] for r in result["recommendations"]] == ["keep_waiting"]
    assert result["items"][0]["name"] == "LJ001-0000.wav"


def test_step_that_does_not_exist_lists_the_steps(run, capsys):
    code, out, err = run_main(capsys, "--step", 999, *out_dir(run))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "no checkpoint_999 or alignments/step_999.npz; available steps: 200, 1200" in err


def test_no_argument_takes_the_newest(run, capsys, monkeypatch):
    monkeypatch.chdir(run.parent.parent)  # the default output_directory is ./output
    code, out, _ = run_main(capsys, "--json", "--no-plot")
    assert code == 0 and json.loads(out)["step"] == 1200


@pytest.mark.parametrize("make", ["nothing", "empty_run"])
def test_no_argument_without_a_run_tells_how_to_train(tmp_path, capsys, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    if make == "empty_run":
        (tmp_path / "output" / "trial_0").mkdir(parents=True)
    code, out, err = run_main(capsys)
    assert code == 2 and out == ""
    assert "no checkpoints or alignment snapshots yet; train first: python train.py " \
           "--output_directory=output --log_directory=logs" in err
    assert err.count("\n") == 1


def test_hparams_of_the_run_set_the_criteria(run, capsys):
    (run / "hparams.json").write_text(create_hparams("preset=demo").to_json())
    _, out, _ = run_main(capsys, "--step", 1200, "--json", "--no-plot", *out_dir(run))
    criterion = json.loads(out)["criterion"]
    assert criterion["step"] == 1000 and criterion["threshold"] == pytest.approx(0.5)


def test_unreadable_hparams_json_falls_back_with_a_note(run, capsys):
    (run / "hparams.json").write_text('{"no_such_hparam": 1}')
    code, out, _ = run_main(capsys, "--step", 1200, "--no-plot", *out_dir(run))
    assert code == 0
    assert "hparams: defaults" in out
    assert f"could not use {run / 'hparams.json'} (unknown hparam(s): no_such_hparam)" in out


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(3, 40, 10), (40,)])
def test_matrix_that_is_not_2d(tmp_path, capsys, shape):
    path = tmp_path / "a.npy"
    np.save(path, np.full(shape, 0.1))
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2
    assert f"holds an array of shape {shape}; expected a 2-D (decoder steps, tokens)" in err


def test_rows_not_summing_to_one(tmp_path, capsys):
    path = tmp_path / "a.npy"
    A = realistic_diagonal(100, 30)
    A[17] *= 0.5
    np.save(path, A)
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2
    assert "a.npy: decoder step 17: the attention row sums to 0.5000, not 1 (tolerance" in err


def test_transposed_matrix_gets_a_hint(tmp_path, capsys):
    path = tmp_path / "a.npy"
    np.save(path, realistic_diagonal(100, 30).T)
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "looks transposed: pass it as (decoder steps, tokens)" in err


def test_negative_weights(tmp_path, capsys):
    path = tmp_path / "a.npy"
    A = hard_diagonal(50, 20)
    A[3, 0] = -0.5
    np.save(path, A)
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "negative" in err


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_reported_as_non_finite_never_healthy(tmp_path, capsys, value):
    """A diverged run's map is a finding of the report, not a file error."""
    path = tmp_path / "a.npy"
    A = hard_diagonal(50, 20)
    A[3, 0] = value
    np.save(path, A)
    code, out, _ = run_main(capsys, "--alignment", path)
    assert code == 0
    assert re.search(r"non-finite values \(NaN/inf\) \(non_finite\)\s+1/1", out), out
    assert re.search(r"healthy\s+0/1", out)


def test_snapshot_rows_not_summing_name_the_item(run, capsys):
    bad = realistic_diagonal(120, 37)
    bad[5] = 0.0
    path = write_snapshot(run, 1400, [hard_diagonal(50, 20), bad])
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "item 1 (LJ001-0001.wav), decoder step 5" in err


@pytest.mark.parametrize("kind", ["garbage.npy", "garbage.npz", "truncated.npz", "pickle.npy"])
def test_corrupt_file(tmp_path, capsys, kind):
    path = tmp_path / kind
    if kind.startswith("garbage"):
        path.write_bytes(os.urandom(2000))
    elif kind == "truncated.npz":
        np.savez_compressed(path, alignments=np.ones((2, 50, 20)) / 20,
                            text_lengths=np.array([20, 20]), decoder_lengths=np.array([50, 50]))
        path.write_bytes(path.read_bytes()[:300])
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2
    # plain words for what the file is, never numpy's advice to load it unsafely
    expected = {"garbage.npy": "not a NumPy file", "garbage.npz": "not a NumPy file",
                "truncated.npz": "truncated or corrupt", "pickle.npy": "holds Python objects"}
    assert expected[kind] in err, err
    assert "allow_pickle" not in err
    assert err.count("\n") == 1


def test_text_file_as_alignment(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("attention looked fine\n")
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "not a NumPy file" in err and "allow_pickle" not in err


def test_foreign_npz(tmp_path, capsys):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(3), b=np.ones(2))
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2
    assert ("not an alignment snapshot (missing alignments, decoder_lengths, text_lengths; has "
            "b, w)") in err


def test_snapshot_with_bad_lengths(tmp_path, capsys):
    path = tmp_path / "step_5.npz"
    np.savez(path, alignments=np.ones((2, 50, 20)) / 20, text_lengths=np.array([20, 25]),
             decoder_lengths=np.array([50, 50]))
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "text_lengths must lie in 1..20" in err


@pytest.mark.parametrize("flag", ["--alignment", "--checkpoint"])
def test_missing_path(tmp_path, capsys, flag):
    code, _, err = run_main(capsys, flag, tmp_path / "nothing_here")
    assert code == 2
    assert "nothing_here: no such" in err


def test_alignment_path_that_is_a_folder(tmp_path, capsys):
    code, _, err = run_main(capsys, "--alignment", tmp_path)
    assert code == 2 and "is a folder" in err


def test_step_and_checkpoint_together(run, capsys):
    code, _, err = run_main(capsys, "--step", 1200, "--checkpoint", run / "checkpoint_1200")
    assert code == 2 and "--step and --checkpoint name two sources; give one" in err


def test_usage_error_exits_2(capsys):
    code, _, err = run_main(capsys, "--lang", "de")
    assert code == 2 and "invalid choice" in err


def test_analyze_raises_diagnostics_error(tmp_path):
    with pytest.raises(diag.DiagnosticsError, match="no such file") as info:
        diag.analyze_current_alignment(alignment_path=str(tmp_path / "x.npy"))
    assert isinstance(info.value, ValueError)
    with pytest.raises(diag.DiagnosticsError, match="unknown language 'fr'"):
        diag.analyze_current_alignment(alignment_path=str(tmp_path / "x.npy"), lang="fr")
    with pytest.raises(diag.DiagnosticsError, match="either a checkpoint or an alignment file"):
        diag.analyze_current_alignment(alignment_path="a.npy", checkpoint="b")


# ---------------------------------------------------------------------------- red flags, advice
def test_red_flags_and_fail_on_red_flag(run, capsys):
    write_snapshot(run, 2400, band_maps())
    code, out, _ = run_main(capsys, "--step", 2400, "--no-plot", *out_dir(run))
    assert code == 0
    assert "#1 low diagonality" in out and "#4 horizontal bands" in out
    assert "python check_data.py" in out and 'guide_loss_weight=5.0' in out
    assert "curriculum=True" in out and "--warm_start" in out
    assert "FAIL" in out
    code, _, _ = run_main(capsys, "--step", 2400, "--no-plot", "--fail-on-red-flag", *out_dir(run))
    assert code == 3
    code, _, _ = run_main(capsys, "--step", 1200, "--no-plot", "--fail-on-red-flag", *out_dir(run))
    assert code == 0


def test_flag_2_uses_the_guided_term_of_the_log(run, capsys):
    maps = [realistic_diagonal(120, 37)] + [uniform(120, 37)] * 3  # diagonality about 0.25
    write_snapshot(run, 3000, maps)
    write_log(run, [log_record(1200, 0.9), log_record(3000, 0.25, guided_term=0.004)])
    code, out, _ = run_main(capsys, "--step", 3000, "--json", "--no-plot", *out_dir(run))
    result = json.loads(out)
    assert code == 0
    assert [f["id"] for f in result["red_flags"]] == [2]
    assert result["guided_term"] == pytest.approx(0.004)
    assert result["guided_term_source"] == "log"
    assert result["recommendations"][0]["id"] == "guidance_off"


def test_guided_term_is_computed_without_a_log_record(run, capsys):
    pytest.importorskip("loss_function")
    from loss_function import guided_attention_weight

    code, out, _ = run_main(capsys, "--step", 1200, "--json", "--no-plot", *out_dir(run))
    result = json.loads(out)
    assert result["guided_term_source"] == "computed"
    # a clean diagonal: small loss, times the weight at step 1200
    assert 0 < result["guided_term"] < 0.05 * guided_attention_weight(1200, create_hparams())


def test_stuck_items_recommend_trimming_silence(run, capsys):
    write_snapshot(run, 1400, [with_hold(300, 60, 0, 80)] * 3 + [realistic_diagonal(120, 37)])
    _, out, _ = run_main(capsys, "--step", 1400, "--json", "--no-plot", *out_dir(run))
    result = json.loads(out)
    assert result["problems"] == {"stuck": 3}
    assert "trim_silence" in [r["id"] for r in result["recommendations"]]


def test_a_remediated_run_is_not_told_the_remedy_again(run, capsys):
    write_snapshot(run, 2400, band_maps())
    write_log(run, [dict(log_record(2200, 0.02), remediated=True), log_record(2400, 0.02)])
    _, out, _ = run_main(capsys, "--step", 2400, "--json", "--no-plot", *out_dir(run))
    result = json.loads(out)
    ids = [r["id"] for r in result["recommendations"]]
    assert "check_data" in ids and "warm_start" in ids
    assert "guide_weight" not in ids and "curriculum" not in ids
    assert result["notes"] == ["the run has remediated a red flag (guide_loss_weight=5.0, "
                               "curriculum on); the advice takes that into account"]


def test_too_early_to_judge(run, capsys):
    _, out, _ = run_main(capsys, "--step", 200, "--no-plot", *out_dir(run))
    assert "no milestone yet; the first is diagonality > 10% at step 1000" in out
    assert "Too early to judge" in out


def test_free_running_arrays_of_a_snapshot(run, capsys):
    write_snapshot(run, 1600, good_maps(), free=[realistic_diagonal(100, 37), uniform(50, 30)])
    _, out, _ = run_main(capsys, "--step", 1600, "--json", "--no-plot", *out_dir(run))
    free = json.loads(out)["free_running"]
    assert free["n_items"] == 2 and free["failure_counts"]["diffuse"] == 1
    assert free["hit_max_steps"] == ["LJ002-0001.wav"]
    _, out, _ = run_main(capsys, "--step", 1600, "--no-plot", *out_dir(run))
    assert "Free-running decoding (from text alone, 2 utterances)" in out
    assert "1 of 2 did not stop within max_decoder_steps: LJ002-0001.wav" in out


# ---------------------------------------------------------------------------- language, plots
def test_russian_report(run, capsys):
    write_snapshot(run, 2400, band_maps())
    code, out, _ = run_main(capsys, "--step", 2400, "--lang", "ru", "--no-plot", *out_dir(run))
    assert code == 0
    assert len(CYRILLIC.findall(out)) > 200
    assert "Диагностика выравнивания, шаг 2400" in out
    assert "НЕ ПРОЙДЕН" in out and "Рекомендации:" in out
    assert "горизонтальная полоса" in out
    english_only = [line for line in out.splitlines()
                    if line.strip() and not CYRILLIC.search(line)]
    assert english_only == [], english_only  # every line carries Russian text


def test_plot_to_a_chosen_path(run, capsys, tmp_path):
    target = tmp_path / "pics" / "mine.png"
    code, out, _ = run_main(capsys, "--step", 1200, "--plot", target, *out_dir(run))
    assert code == 0 and f"Plot: {target}" in out
    assert_png(target)
    assert not (run / "diagnostics" / "step_1200.png").exists()


def test_history_table_and_plot(run, capsys):
    hp = create_hparams()
    write_log(run, [log_record(s, d, flags=f, hp=hp,
                               free={"diagonal_score": d / 2, "focus_score": 0.3})
                    for s, d, f in [(200, 0.02, ()), (1000, 0.15, ()), (2000, 0.03, (1,)),
                                    (3000, 0.45, ())]])
    code, out, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 0, err
    rows = [line for line in out.splitlines() if re.match(r"^\d+\s", line)]
    assert [int(r.split()[0]) for r in rows] == [200, 1000, 2000, 3000]
    assert ">0.10 PASS" in rows[1] and ">0.30 PASS" in rows[3]
    assert rows[2].rstrip().endswith(" 1")
    assert_png(run / "diagnostics" / "history.png")


def test_history_tolerates_a_line_being_written(run, capsys):
    write_log(run, [log_record(200, 0.02)])
    with open(run / "diagnostics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 400, "metr')
    code, out, _ = run_main(capsys, "--history", "--json", "--plot", run / "h.png", *out_dir(run))
    assert code == 0 and [r["step"] for r in json.loads(out)["rows"]] == [200]


def test_history_errors(run, capsys):
    code, _, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 2 and "diagnostics.jsonl: no such file; training writes it" in err
    (run / "diagnostics.jsonl").write_text('{"step": 200}\nnot json\n{"step": 400}\n')
    code, _, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 2 and "diagnostics.jsonl:2: not a JSON object" in err
    (run / "diagnostics.jsonl").write_text('{"step": "x"}\n')
    code, _, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 2 and "diagnostics.jsonl:1: a record needs an integer 'step'" in err
    (run / "diagnostics.jsonl").write_text('{"step": 200}\n')
    code, _, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 2 and "the record of step 200 has no metrics.diagonal_score" in err
    (run / "diagnostics.jsonl").write_text("")
    code, _, err = run_main(capsys, "--history", *out_dir(run))
    assert code == 2 and "no validation records yet" in err


# ---------------------------------------------------------------------------- as the user runs it
def _python(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_users_snippet(run):
    write_log(run, [log_record(1200, 0.9)])  # the trainer's record: no torch import needed
    snippet = ("from alignment_diagnostics import analyze_current_alignment; "
               "r = analyze_current_alignment(step=1200); "
               "print(r['diagnostics']['diagonal_score'])")
    proc = _python(["-c", snippet], cwd=run.parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert 0.8 < float(proc.stdout.strip()) <= 1.0


def test_script_exit_codes(run, tmp_path):
    write_log(run, [log_record(1200, 0.9)])
    script = os.path.join(ROOT, "alignment_diagnostics.py")
    proc = _python([script, "--step=1200", "--no-plot"], cwd=run.parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "Alignment diagnostics, step 1200" in proc.stdout
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 4)))
    proc = _python([script, f"--alignment={bad}"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("alignment_diagnostics: error: ")
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture
def tiny_checkpoint(tmp_path, make_corpus):
    """output/trial_0/checkpoint_1000 of an untrained tiny model, its validation set 3 wavs."""
    torch = pytest.importorskip("torch")
    checkpoint = pytest.importorskip("checkpoint")
    model_module = pytest.importorskip("model")
    corpus = make_corpus(tmp_path / "data", 3, name="val",
                         texts=["A very fine book.", "Yes.", "He said no!"])  # short: fast
    hp = create_hparams("preset=tiny").replace(validation_files=str(corpus.filelist),
                                               training_files=str(corpus.filelist))
    torch.manual_seed(0)
    model = model_module.Tacotron2(hp)
    run_dir = tmp_path / "output" / "trial_0"
    path = checkpoint.save_checkpoint(str(run_dir / "checkpoint_1000"), model=model,
                                      optimizer=None, hp=hp, step=1000)
    return run_dir, path, corpus


def test_checkpoint_teacher_forced_and_free_running(tiny_checkpoint, capsys):
    run_dir, _, corpus = tiny_checkpoint
    code, out, err = run_main(capsys, "--checkpoint", run_dir / "checkpoint_LATEST",
                              "--device", "cpu", "--inference", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["source"]["kind"] == "checkpoint"
    assert result["source"]["path"].endswith("checkpoint_1000")
    assert result["source"]["filelist"] == str(corpus.filelist)
    assert result["step"] == 1000 and result["n_items"] == 3
    assert result["hparams_source"] == "checkpoint"
    assert sorted(item["name"] for item in result["items"]) == ["val_000.wav", "val_001.wav",
                                                                 "val_002.wav"]
    assert 0.0 <= result["diagnostics"]["diagonal_score"] <= 1.0
    assert result["criterion"]["step"] == 1000
    assert result["guided_term"] is not None and result["guided_term_source"] == "computed"
    free = result["free_running"]
    assert free["n_items"] == 3 and free["max_decoder_steps"] == 50
    assert set(free["hit_max_steps"]) <= {"val_000.wav", "val_001.wav", "val_002.wav"}
    assert_png(run_dir / "diagnostics" / "step_1000.png")


def test_step_prefers_the_checkpoint_then_the_snapshot(tiny_checkpoint, capsys):
    run_dir, _, corpus = tiny_checkpoint
    write_snapshot(run_dir, 1000, good_maps())
    code, out, err = run_main(capsys, "--step", 1000, "--device", "cpu", "--json", "--no-plot",
                              "--output_directory", run_dir.parent)
    assert code == 0, err
    assert json.loads(out)["source"]["kind"] == "checkpoint"

    # A checkpoint whose validation filelist is gone: the snapshot of the step, with a note.
    os.remove(corpus.filelist)
    code, out, err = run_main(capsys, "--step", 1000, "--device", "cpu", "--json", "--no-plot",
                              "--output_directory", run_dir.parent)
    assert code == 0, err
    result = json.loads(out)
    assert result["source"]["kind"] == "snapshot"
    assert "could not be evaluated" in result["notes"][0]
    # Without a snapshot the error is the checkpoint's.
    os.remove(run_dir / "alignments" / "step_1000.npz")
    code, _, err = run_main(capsys, "--step", 1000, "--device", "cpu", "--no-plot",
                            "--output_directory", run_dir.parent)
    assert code == 2 and str(corpus.filelist) in err


def test_checkpoint_with_another_filelist(tiny_checkpoint, capsys, make_corpus, tmp_path):
    run_dir, _, _ = tiny_checkpoint
    other = make_corpus(tmp_path / "other", 2, name="other", texts=["Yes.", "No."])
    code, out, err = run_main(capsys, "--checkpoint", run_dir / "checkpoint_1000", "--device",
                              "cpu", "--filelist", other.filelist, "--json", "--no-plot",
                              "--batch_size", 1)
    assert code == 0, err
    result = json.loads(out)
    assert result["n_items"] == 2 and result["source"]["filelist"] == str(other.filelist)


def test_corrupt_checkpoint(tmp_path, capsys):
    pytest.importorskip("checkpoint")
    path = tmp_path / "checkpoint_5"
    path.write_bytes(os.urandom(500))
    code, _, err = run_main(capsys, "--checkpoint", path, "--device", "cpu")
    assert code == 2 and "not a PyTorch checkpoint" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("device,match", [("nonsense", "not a device name"),
                                          ("cuda", "CUDA is not available here")])
def test_bad_device(tmp_path, capsys, device, match):
    torch = pytest.importorskip("torch")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    path = tmp_path / "checkpoint_5"
    path.write_bytes(b"not read before the device is checked")
    code, _, err = run_main(capsys, "--checkpoint", path, "--device", device)
    assert code == 2 and f"--device {device}: {match}" in err


def test_empty_snapshot(tmp_path, capsys):
    path = tmp_path / "step_5.npz"
    np.savez(path, alignments=np.zeros((0, 50, 20)), text_lengths=np.zeros(0, np.int64),
             decoder_lengths=np.zeros(0, np.int64))
    code, _, err = run_main(capsys, "--alignment", path)
    assert code == 2 and "'alignments' is empty (shape (0, 50, 20))" in err


# ---------------------------------------------------------------------------- reading and stopping
def _parked(read_steps, total, n_tokens):
    tokens = np.minimum(np.arange(total) * n_tokens // read_steps, n_tokens - 1)
    return np.eye(n_tokens, dtype=np.float32)[tokens]


def test_a_model_that_reads_but_does_not_stop_is_told_runs_on(run, capsys):
    """Read to the end on a diagonal, then parked on the last token until max_decoder_steps:
    the report says "read" and "runs on", and advises on the gate, not on reading."""
    free = [_parked(90, 400, 30), _parked(60, 400, 20), _parked(80, 400, 25)]
    write_snapshot(run, 1600, good_maps(), free=free)
    code, out, _ = run_main(capsys, "--step", 1600, "--no-plot", *out_dir(run))
    assert code == 0
    reading = re.search(r"reading \(up to where the attention reaches the end of the text\): "
                        r"diagonality (\d\.\d+); read to the end: 3 of 3", out)
    assert reading and float(reading.group(1)) > 0.9, out
    assert "runs on after the text: 3/3" in out
    assert re.search(r"whole decoded maps: diagonality 0\.0\d\d", out)
    assert "3 of 3 utterance(s) read the text to its end, then the gate did not stop" in out
    result = diag.analyze_current_alignment(step=1600, output_directory=str(run.parent),
                                            run_name=run.name, plot=False)
    assert result["free_running"]["runs_on"] == 3


def test_reports_in_two_languages_do_not_overwrite_each_other(run, capsys):
    code_en, out_en, _ = run_main(capsys, "--step", 1200, *out_dir(run))
    code_ru, out_ru, _ = run_main(capsys, "--step", 1200, "--lang", "ru", *out_dir(run))
    assert code_en == code_ru == 0
    en, ru = run / "diagnostics" / "step_1200.png", run / "diagnostics" / "step_1200.ru.png"
    assert en.is_file() and ru.is_file() and en.read_bytes() != ru.read_bytes()
    assert str(ru) in out_ru and str(en) in out_en


def test_skipping_on_most_items_is_told_apart_from_a_few_mismatched_transcripts(run, capsys):
    def skipper(T, N):  # monotonic, reaches the end, but jumps over every other token
        tokens = np.minimum((np.arange(T) * N // T) // 2 * 2, N - 1)
        return np.eye(N, dtype=np.float32)[tokens]

    write_snapshot(run, 1400, [skipper(120, 40)] * 4)
    _, out, _ = run_main(capsys, "--step", 1400, "--no-plot", *out_dir(run))
    assert "the model jumps from word to word" in out and "may not match their audio" not in out
    write_snapshot(run, 1500, [skipper(120, 40)] + good_maps()[:3] * 4)
    _, out, _ = run_main(capsys, "--step", 1500, "--no-plot", *out_dir(run))
    assert "may not match their audio (LJ001-0000.wav)" in out
    assert "jumps from word to word" not in out
