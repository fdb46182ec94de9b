"""tune.py: the search space, the objective, trial outcomes, bad input, and a real tiny study.

The study test runs real train.py trials of 4 steps on a generated corpus: a first session (trial 0,
the plan's values), a second one stopped by SIGTERM during trial 1, and a third that resumes,
retries trial 1's settings as trial 2 and prunes it.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading

import optuna
import pytest

import tune
import tuning
from hparams import create_hparams
from run_files import ValidationRecord
from helpers import wait_for, write_token_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE = os.path.join(ROOT, "tune.py")
STEPS = 4


def _record(step, diag=None, near=0.0, mel=1.0, flags=(), loss=1.0, reading=None):
    """A diagnostics.jsonl record as train.py writes it (the fields tune.py reads)."""
    record = {"step": step,
            "losses": {"total": loss, "mel": mel, "mel_postnet": mel, "gate": 0.1,
                       "guided_attn": 0.2},
            "metrics": {"diagonal_score": 0.5},
            "red_flags": [dict(f) for f in flags],
            "free_running": None if diag is None else
            {"diagonal_score": diag, "focus_score": 0.5, "stopped_share": 1.0,
             "near_length_share": near, "items": 4}}
    if reading is not None:
        record["free_running"]["reading_diagonal_score"] = reading
    return record


def _score(records):
    """tuning.score_records of records given as dicts, read as train.py's readers read them."""
    return tuning.score_records([ValidationRecord.from_dict(r) for r in records])


# ------------------------------------------------------------------------------- search space
def test_space_table_and_overrides(tmp_path):
    names = [d.name for d in tuning.SEARCH_SPACE]
    for name in ("guide_loss_weight", "guide_sigma", "guide_scale", "guide_decay",
                 "learning_rate", "p_attention_dropout", "p_decoder_dropout",
                 "n_frames_per_step", "gate_positive_weight"):
        assert name in names
    space = {d.name: d for d in tuning.parse_space(
        "guide_sigma=0.1:0.3,learning_rate=1e-4:1e-2:log,n_frames_per_step=2|3,"
        "p_prenet_dropout=off,batch_size=8:32")}
    assert (space["guide_sigma"].low, space["guide_sigma"].high, space["guide_sigma"].log) == \
        (0.1, 0.3, False)
    assert space["learning_rate"].log and space["learning_rate"].high == 1e-2
    assert space["n_frames_per_step"].choices == (2, 3)
    assert "p_prenet_dropout" not in space
    assert space["batch_size"].kind == "int" and space["batch_size"].low == 8
    spec = tmp_path / "space.json"
    spec.write_text(json.dumps({"guide_scale": {"low": 2, "high": 4, "log": True},
                                "n_frames_per_step": {"choices": [1, 3]},
                                "guide_decay": None}))
    space = {d.name: d for d in tuning.parse_space(str(spec))}
    assert space["guide_scale"].log and space["guide_scale"].low == 2.0
    assert space["n_frames_per_step"].choices == (1, 3) and "guide_decay" not in space


@pytest.mark.parametrize("text, words", [
    ("nonsense=1:2", "unknown hparam"),
    ("guide_sigma=0.3:0.1", "must be below"),
    ("guide_sigma=0:1:log", "log-scale"),
    ("guide_sigma", "expected name="),
    ("text_cleaners=a|b", "is a list"),
    ("guide_sigma=a:b", "bad value"),
    ("guide_sigma=1:2:cubic", "low:high:log"),
])
def test_space_errors(text, words):
    with pytest.raises(tuning.UsageError, match=words):
        tuning.parse_space(text)


def test_space_contains_the_plan_and_valid_settings():
    space, notices = tuning.check_space(
        tuning.parse_space("guide_loss_weight=3:8:log,n_frames_per_step=2|3"), "preset=demo")
    space = {d.name: d for d in space}
    # the demo plan: guide_loss_weight 2.0 (widened into the range), n_frames_per_step 3 (a choice)
    assert space["guide_loss_weight"].low == 2.0 and space["guide_loss_weight"].high == 8.0
    assert space["n_frames_per_step"].choices == (2, 3)
    assert any("guide_loss_weight" in n for n in notices)
    space, _ = tuning.check_space(tuning.parse_space("n_frames_per_step=2|3"), "")
    assert {d.name: d for d in space}["n_frames_per_step"].choices == (1, 2, 3)
    with pytest.raises(tuning.UsageError, match="p_attention_dropout=1.5"):
        tuning.check_space(tuning.parse_space("p_attention_dropout=0:1.5"), "")
    plan = tuning.plan_values(tuning.SEARCH_SPACE, "preset=demo")
    assert plan["n_frames_per_step"] == 3 and plan["guide_sigma"] == 0.2
    text = tuning.join_hparams("preset=demo,", {"guide_sigma": 0.123456789, "n_frames_per_step": 2})
    assert text == "preset=demo,guide_sigma=0.123457,n_frames_per_step=2"
    assert create_hparams(text).guide_sigma == 0.123457


# ------------------------------------------------------------------------------- objective
def test_score_area_aligned_step_and_tie_breakers():
    records = [_record(100, 0.2), _record(200, 0.8, near=0.5, mel=1.0), _record(300, 0.6)]
    score = _score(records)
    # trapezoids from (0, 0): 100*0.1 + 100*0.5 + 100*0.7 = 130 over 300 steps
    assert score.mean_diagonality == pytest.approx(130 / 300)
    assert score.aligned_step == 200 and score.step == 300 and score.last_diagonality == 0.6
    # records without a reading diagonality (older trainers): the whole-map one stands in
    assert score.mean_reading == pytest.approx(130 / 300)
    assert score.value == pytest.approx(130 / 300 * (1 + tuning.READING_WEIGHT) + tuning.MEL_WEIGHT / 2)
    late = _score([_record(100, 0.0), _record(200, 0.2), _record(300, 0.8)])
    assert late.value < score.value  # aligning later scores lower, even with a higher end
    tied = _score([_record(100, 0.2), _record(200, 0.8, near=1.0), _record(300, 0.6,
                                                                                  near=1.0)])
    assert tied.value == pytest.approx(score.value + tuning.NEAR_LENGTH_WEIGHT)
    # a validation without free-running decoding adds no point; it still counts for divergence
    assert _score([_record(100, None), _record(200, 0.4)]).curve == [(200, 0.4, 0.4)]
    assert _score([_record(100, None)]).value is None


def test_reading_orders_trials_before_the_gate_stops_them():
    """Before the gate learns to stop, the whole-map score is 0 for everyone; reading tells them
    apart, and a trial that reads and stops beats any that only reads."""
    reads = _score([_record(50, 0.0, reading=0.6), _record(100, 0.0, reading=1.0)])
    lost = _score([_record(50, 0.0, reading=0.1), _record(100, 0.0, reading=0.2)])
    stops = _score([_record(50, 0.1, reading=0.6), _record(100, 0.5, reading=1.0)])
    assert reads.mean_diagonality == 0.0 and reads.mean_reading == pytest.approx(0.55)
    assert lost.value < reads.value < stops.value
    assert reads.curve == [(50, 0.0, 0.6), (100, 0.0, 1.0)]
    assert reads.value <= tuning.READING_WEIGHT + tuning.NEAR_LENGTH_WEIGHT + tuning.MEL_WEIGHT


def test_score_divergence():
    nan_loss = _score([_record(100, 0.3), _record(200, 0.4, loss=float("nan"))])
    assert "non-finite total loss at step 200" in nan_loss.diverged
    flagged = _score([_record(100, 0.3, flags=[{"id": 5, "name": "divergence",
                                                             "message": "loss exploded"}])])
    assert "divergence" in flagged.diverged
    other = _score([_record(100, 0.3, flags=[{"id": 1, "name": "low_diagonality",
                                                           "message": "x"}])])
    assert other.diverged is None and other.red_flags == ["low_diagonality"]
    assert _score([_record(100, float("inf"))]).diverged
    broken = _record(100, 0.3)
    broken["free_running"]["failure_counts"] = {"non_finite": 2, "stuck": 0}
    assert "non-finite free-running attention in 2 item(s)" in _score([broken]).diverged
    healthy = _record(100, 0.3)
    healthy["failure_counts"] = {"non_finite": 0, "stuck": 3}
    assert _score([healthy]).diverged is None


# ------------------------------------------------------------------------------- outcomes
def _runner():
    args = argparse.Namespace(hparams="preset=tiny", steps=STEPS, objective="alignment",
                              output_directory="o",
                              log_directory="l", tensorboard_directory="r", threads=1)
    return tune.TrialRunner(args, tuning.SEARCH_SPACE, tune.DevicePool([None]), threading.Event())


def test_exit_status_and_records_decide_the_outcome(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    runner, console = _runner(), tmp_path / "console.log"
    console.write_text("Traceback ...\nerror: bad hparam x\n")
    good = [_record(2, 0.2), _record(4, 0.4)]

    def judge(status, records, run_dir=tmp_path):
        trial = study.ask()
        try:
            return runner._judge(trial, status, [ValidationRecord.from_dict(r) for r in records],
                                 str(run_dir), str(console), optuna), trial
        except Exception as err:  # the exception is the outcome under test
            return err, trial

    value, _ = judge(0, good)
    assert value == pytest.approx(_score(good).value)
    err, trial = judge(3, good + [_record(6, 0.1, flags=[{"id": 1, "name": "low_diagonality"}])])
    assert isinstance(err, optuna.TrialPruned) and "red flag" in trial.user_attrs["note"]
    err, trial = judge(2, [])
    assert isinstance(err, tune.TrialFailed) and "error: bad hparam x" in str(err)
    err, _ = judge(0, good + [_record(6, 0.5, loss=float("nan"))])
    assert isinstance(err, tune.TrialFailed) and "diverged" in str(err)
    report_dir = tmp_path / "run"
    report_dir.mkdir()
    (report_dir / "red_flag_report_step_6.txt").write_text(
        "Training stopped by a red flag at step 6.\nred flag 5 (divergence): loss went to inf\n")
    err, _ = judge(3, good, report_dir)
    assert isinstance(err, tune.TrialFailed) and "divergence" in str(err)
    err, _ = judge(-9, good)
    assert isinstance(err, tune.TrialFailed) and "status -9" in str(err)
    err, _ = judge(0, [_record(2, None)])
    assert isinstance(err, tune.TrialFailed) and "no validation" in str(err)


def test_trial_left_running_is_failed_and_queued_again(tmp_path):
    """A tune.py killed mid-trial leaves it RUNNING: the next start fails it and retries it."""
    args = tune.parse_args(["--output_directory", str(tmp_path), "--hparams", "preset=tiny",
                            "--steps", "10", "--study", "s"])
    storage, private = tune.open_storage(args)
    study, _ = tune.prepare_study(args, tuning.SEARCH_SPACE, storage, private)
    assert len(study.trials) == 1 and study.trials[0].state.name == "WAITING"
    trial = study.ask()  # the plan's values, as tune.py runs them; this one finishes
    tuning.suggest(trial, tuning.SEARCH_SPACE)
    trial.set_user_attr("outcome", "complete")
    study.tell(trial, 0.5)
    running = study.ask()  # this one's tune.py is "killed": never told
    tuning.suggest(running, tuning.SEARCH_SPACE)
    study, notices = tune.prepare_study(args, tuning.SEARCH_SPACE, storage, private)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "WAITING"], states
    retry = study.trials[2]
    assert retry.user_attrs["retry_of"] == 1
    assert retry.system_attrs["fixed_params"] == running.params
    assert any("left running" in n for n in notices)
    assert sum(tune.counts_as_done(t) for t in study.trials) == 1


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("more, words", [
    (["--space", "nonsense=1:2"], "unknown hparam"),
    (["--hparams", "no_such_name=1"], "--hparams"),
    (["--hparams", "preset=tiny,free_running_every=0"], "free_running_every"),
    (["--steps", "1"], "below iters_per_validation"),
    (["--devices", "tpu:0"], "--devices"),
    (["--devices", "cuda:7"], "--devices: cuda:7"),
    (["--devices", "cpu", "--n_jobs", "2"], "one running trial per device"),
    (["--pruner", "sometimes"], "--pruner"),
    (["--n_trials", "0"], "--n_trials"),
    (["--study", "a/b"], "--study"),
    (["--storage", "nosuchdb://x"], "--storage"),
    (["--bogus_flag"], "unrecognized"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, more, words):
    argv = ["--output_directory", str(tmp_path / "out"), "--log_directory", str(tmp_path / "l"),
            "--tensorboard_directory", str(tmp_path / "r"), "--hparams", "preset=tiny",
            "--steps", "10", *more]
    try:
        status = tune.main(argv)
    except SystemExit as exit_:  # argparse errors exit from parse_args
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_devices_give_one_slot_each(tmp_path):
    def slots(*more):
        args = tune.parse_args(["--output_directory", str(tmp_path / "o"), "--log_directory",
                                str(tmp_path / "l"), "--tensorboard_directory", str(tmp_path / "r"),
                                "--hparams", "preset=tiny", "--steps", "10", *more])
        return tune.check_args(args)[1]

    assert slots() == [None]  # train.py's default device, one trial at a time
    assert slots("--n_jobs", "3") == [None, None, None]
    assert slots("--devices", "cpu,cpu") == ["cpu", "cpu"]  # one running trial per entry
    assert slots("--devices", "cpu,cpu", "--n_jobs", "1") == ["cpu"]
    pool = tune.DevicePool(["cpu", "cpu:0"])
    taken = {pool.take(), pool.take()}
    assert taken == {"cpu", "cpu:0"}
    pool.give("cpu")
    assert pool.take() == "cpu"


def test_unusable_output_folder_and_changed_resume(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert tune.main(["--output_directory", str(blocker), "--hparams", "preset=tiny",
                      "--steps", "10"]) == 2
    assert "cannot write in" in capsys.readouterr().err
    args = tune.parse_args(["--output_directory", str(tmp_path / "o"), "--hparams", "preset=tiny",
                            "--steps", "10"])
    tune.check_folder(args.output_directory)
    storage, private = tune.open_storage(args)
    tune.prepare_study(args, tuning.SEARCH_SPACE, storage, private)
    del storage
    assert tune.main(["--output_directory", str(tmp_path / "o"), "--log_directory",
                      str(tmp_path / "l"), "--tensorboard_directory", str(tmp_path / "r"),
                      "--hparams", "preset=tiny", "--steps", "20"]) == 2
    assert "resume it with the same" in capsys.readouterr().err
    (tmp_path / "o2" / "trial_0").mkdir(parents=True)
    assert tune.main(["--output_directory", str(tmp_path / "o2"), "--hparams", "preset=tiny",
                      "--steps", "10", "--log_directory", str(tmp_path / "l"),
                      "--tensorboard_directory", str(tmp_path / "r")]) == 2
    assert "trial_0 from another run" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a real study
def _command(tmp_path, train, val, n_trials, *more):
    hparams = (f"preset=tiny,training_files={train},validation_files={val},"
               f"text_cleaners=[basic_cleaners],iters_per_validation=2")
    return [sys.executable, TUNE, f"--n_trials={n_trials}", f"--steps={STEPS}",
            f"--hparams={hparams}", f"--output_directory={tmp_path / 'output'}",
            f"--log_directory={tmp_path / 'logs'}",
            f"--tensorboard_directory={tmp_path / 'runs'}", "--threads=1", "--seed=3",
            "--space=p_prenet_dropout=off,guide_sigma=0.1:0.3", *more]


def _wait_for(path, proc, timeout=180.0):
    if not wait_for(lambda: os.path.exists(path), timeout, proc=proc):
        assert proc.poll() is None, f"tune.py ended early: {proc.communicate()}"
        raise AssertionError(f"{path} did not appear")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tune")
    train, val = write_token_corpus(str(tmp_path / "corpus"), n_train=16, n_val=4)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # 1: trial 0, the plan's values
    first = subprocess.run(_command(tmp_path, train, val, 1), capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    diag0 = tmp_path / "output" / "trial_0" / "diagnostics.jsonl"
    before = (diag0.read_bytes(), diag0.stat().st_mtime_ns)
    # 2: SIGTERM while trial 1 trains
    proc = subprocess.Popen(_command(tmp_path, train, val, 3), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    _wait_for(tmp_path / "logs" / "trial_1" / "console.log", proc)  # trial 1's train.py started
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    stopped = (proc.returncode, out, err)
    # 3: resume with a pruner that prunes every trial at its first validation
    third = subprocess.run(_command(tmp_path, train, val, 2, "--pruner=threshold:2",
                                    "--prune_warmup=0"),
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    study = optuna.load_study(study_name="tune",
                              storage=f"sqlite:///{tmp_path / 'output' / 'tune.db'}")
    return {"tmp": tmp_path, "first": first, "stopped": stopped, "third": third,
            "study": study, "before": before, "diag0": diag0}


@pytest.mark.slow
def test_study_file_trial_folders_and_logs(study_run):
    tmp = study_run["tmp"]
    assert (tmp / "output" / "tune.db").is_file()
    for n in (0, 2):  # trial 1 was interrupted early
        assert (tmp / "output" / f"trial_{n}" / "diagnostics.jsonl").is_file()
        assert (tmp / "output" / f"trial_{n}" / "checkpoint_LATEST").exists()
        assert (tmp / "logs" / f"trial_{n}" / "train.log").is_file()
        assert (tmp / "runs" / f"trial_{n}").is_dir()  # TensorBoard, side by side
    assert "finished at step 4" in (tmp / "logs" / "trial_0" / "train.log").read_text()
    records = [json.loads(l) for l in study_run["diag0"].read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    trial0 = study_run["study"].trials[0]
    assert sorted(trial0.intermediate_values) == [2, 4]  # one report per validation
    assert trial0.value == pytest.approx(_score(records).value)
    assert "p_prenet_dropout" not in trial0.params  # --space removed it
    assert trial0.distributions["guide_sigma"].low == 0.1


@pytest.mark.slow
def test_interrupt_resume_and_prune(study_run):
    study = study_run["study"]
    status, out, err = study_run["stopped"]
    assert status == 128 + signal.SIGTERM, out + err
    assert "trial 1 FAIL" in out and "resume" in err
    states = [(t.number, t.state.name) for t in study.trials]
    assert states == [(0, "COMPLETE"), (1, "FAIL"), (2, "PRUNED")], states
    assert study.trials[0].user_attrs["defaults"] is True
    assert study.trials[1].user_attrs["outcome"] == "interrupted"
    retry = study.trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == study.trials[1].params
    assert "pruned at step 2" in retry.user_attrs["note"]
    # trial 0 was not run again
    diag0 = study_run["diag0"]
    assert (diag0.read_bytes(), diag0.stat().st_mtime_ns) == study_run["before"]
    assert "trial 2 PRUNED" in study_run["third"].stdout


@pytest.mark.slow
def test_final_report_and_hparams_string(study_run):
    out, tmp = study_run["third"].stdout, study_run["tmp"]
    assert "| trial | status | objective |" in out and "| 2 | PRUNED |" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("--hparams="))
    text = line.strip()[len('--hparams="'):-1]
    hp = create_hparams(text)  # the string parses, and it is trial 0's: the plan's values
    assert hp.preset == "tiny" and hp.guide_loss_weight == 2.0 and hp.guide_sigma == 0.2
    assert text == study_run["study"].trials[0].user_attrs["hparams"]
    assert f'python train.py --hparams="{text}"' in out
    assert (tmp / "output" / "tune_diagonality.png").stat().st_size > 1000
    assert (tmp / "output" / "tune_summary.md").read_text().strip() in out


def test_quality_objective_ranks_speech_between_hum_and_ceiling():
    def with_quality(step, mcd):
        record = _record(step, 0.8, near=1.0)
        record["quality"] = {"mean_mcd": mcd, "mcd": [mcd], "references": {
            "self_mcd": 0.0, "griffin_lim_mcd": 0.5, "flat_mcd": 4.5}}
        return record

    records = [_record(100, 0.8, near=1.0), with_quality(200, 2.5)]
    alignment = _score(records).value
    quality = tuning.score_records([ValidationRecord.from_dict(r) for r in records], "quality")
    assert quality.quality == pytest.approx(0.5) and quality.mcd == 2.5  # half way from the hum
    assert quality.value == pytest.approx(tuning.QUALITY_ALIGNMENT_WEIGHT * alignment + 0.5)
    better = tuning.score_records([ValidationRecord.from_dict(with_quality(200, 1.0))], "quality")
    assert better.quality > quality.quality
    assert tuning.quality_fraction({"mean_mcd": 9.0, "references": {"griffin_lim_mcd": 0.5,
                                                                     "flat_mcd": 4.5}}) == 0.0
