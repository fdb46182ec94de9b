"""run_files: the run folder's layout, its validation records and their round trips."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import train
from alignment_metrics import FreeRunningScores
from guardrails import Action, FlagKind, RedFlag
from run_files import (RecordFollower, RunFilesError, RunFolder, ValidationRecord, parse_records,
                       resolve)

OLD_LOG = Path(__file__).parent / "data" / "diagnostics_from_1b8767f.jsonl"


def _record(step: int, **fields) -> ValidationRecord:
    return ValidationRecord(step=step, losses={"total": 1.0, "mel": 0.5, "mel_postnet": 0.4,
                                               "gate": 0.1, "guided_attn": 0.0},
                            metrics={"diagonal_score": 0.5}, **fields)


def test_a_log_written_by_the_previous_trainer_reads(tmp_path):
    """diagnostics.jsonl as the trainer before run_files wrote it (no action, no quality)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_LOG, run / "diagnostics.jsonl")
    records = RunFolder(str(run)).records()
    assert [r.step for r in records] == [2, 4, 6]
    first = records[0]
    assert first.red_flags[0].kind is FlagKind.LOW_DIAGONALITY
    assert first.action is Action.CONTINUE and first.quality is None
    assert first.free_running.reading_diagonal_score == pytest.approx(0.010569978)
    assert first.milestone["free_value"] == pytest.approx(0.010569978)
    # written back, every line is the line that was read (the keys it had, in their values)
    for line, record in zip(OLD_LOG.read_text().splitlines(), records):
        old = json.loads(line)
        again = record.to_dict()
        assert {k: again[k] for k in old} == old
        assert set(again) - set(old) == {"action"}


@pytest.mark.parametrize("kind", list(FlagKind))
def test_every_red_flag_kind_round_trips_through_the_log(tmp_path, kind):
    folder = RunFolder(str(tmp_path))
    flag = RedFlag.make(kind, "en", "flag1", value=0.01, threshold=0.05, step=7) \
        if kind is FlagKind.LOW_DIAGONALITY else RedFlag(kind, "a message", kind.display_name())
    folder.append_record(_record(7, red_flags=[flag]))
    (read,) = folder.records()
    assert read.red_flags == [flag] and read.red_flags[0].kind is kind


@pytest.mark.parametrize("action", list(Action))
def test_every_action_round_trips_through_the_log(tmp_path, action):
    folder = RunFolder(str(tmp_path))
    folder.append_record(_record(3, action=action))
    assert folder.records()[0].action is action


@pytest.mark.parametrize("outcome", list(train.StepOutcome))
def test_every_step_outcome_is_named_by_its_value(outcome):
    """The loop's outcomes are compared by identity; their values name them in messages."""
    assert train.StepOutcome(outcome.value) is outcome


def test_free_running_and_quality_round_trip(tmp_path):
    folder = RunFolder(str(tmp_path))
    free = FreeRunningScores(diagonal_score=0.9, reading_diagonal_score=0.95, focus_score=0.7,
                             end_reached_share=1.0, stopped_share=1.0, near_length_share=0.5,
                             runs_on_share=0.0, items=2, length_ratio=[1.0, None])
    folder.append_record(_record(5, free_running=free, quality={"mcd_db": 7.5, "wer": None},
                                 extra={"from_a_newer_trainer": [1, 2]}))
    (read,) = folder.records()
    assert read.free_running == free and read.quality == {"mcd_db": 7.5, "wer": None}
    assert read.extra == {"from_a_newer_trainer": [1, 2]}
    assert json.loads(folder.diagnostics_path and open(folder.diagnostics_path).read()
                      )["from_a_newer_trainer"] == [1, 2]


def test_a_torn_last_line_is_skipped_and_other_bad_lines_named(tmp_path):
    text = json.dumps({"step": 1}) + "\n" + '{"step": '
    assert [r.step for r in parse_records(text, "log")] == [1]
    with pytest.raises(RunFilesError, match="log:1: not a JSON object"):
        parse_records("nope\n" + json.dumps({"step": 2}) + "\n", "log")
    assert [r.step for r in parse_records("nope\n" + json.dumps({"step": 2}) + "\n", "log",
                                          strict=False)] == [2]


def test_truncate_drops_newer_records_and_snapshots(tmp_path):
    folder = RunFolder(str(tmp_path))
    for step in (2, 4, 6):
        folder.append_record(_record(step))
        folder.write_snapshot(step, {"alignments": np.zeros((1, 2, 2), np.float32)})
    assert folder.truncate_after(4) == 2
    assert [r.step for r in folder.records()] == [2, 4]
    assert sorted(folder.snapshots()) == [2, 4]
    assert folder.temporaries() == []


def test_checkpoint_names_latest_and_resolve(tmp_path):
    folder = RunFolder(str(tmp_path))
    for step in (5, 10):
        Path(folder.checkpoint_path(step)).write_bytes(b"x")
    folder.point_latest(folder.checkpoint_path(10))
    assert [s for s, _ in folder.checkpoints()] == [5, 10]
    assert resolve(folder.latest_path).endswith("checkpoint_10")
    os.remove(folder.latest_path)
    assert resolve(folder.latest_path).endswith("checkpoint_10")  # no link: the newest file
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve(str(tmp_path / "checkpoint_99"))


def test_follower_reads_whole_lines_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "diagnostics.jsonl"
    follower = RecordFollower(str(path))
    assert follower.poll() == ([], False)
    steps = lambda polled: ([r.step for r in polled[0]], polled[1])  # noqa: E731
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": ')
    assert steps(follower.poll()) == ([1], False)
    with open(path, "a") as f:
        f.write("2}\n" + json.dumps({"step": 3}) + "\n")
    assert steps(follower.poll()) == ([2, 3], False)
    # a rollback to step 1: the trainer renames a shorter file over the log
    tmp = tmp_path / "new.jsonl"
    tmp.write_text(json.dumps({"step": 1}) + "\n")
    os.replace(tmp, path)
    assert steps(follower.poll()) == ([1], True)
    with open(path, "a") as f:
        f.write(json.dumps({"step": 2, "again": True}) + "\n")
    polled, _ = follower.poll()
    assert polled[0].extra == {"again": True}


def test_no_other_module_names_the_run_files():
    """The layout is written once: other modules reach these names through run_files."""
    root = Path(__file__).resolve().parents[1]
    # the snapshot folder: a path joined with "alignments", or "alignments/step_..."
    names = ("diagnostics.jsonl", "checkpoint_LATEST", ', "alignments")', "alignments/step_",
             "hparams.json")
    offenders = []
    for path in list(root.glob("*.py")) + list((root / "bench").glob("*.py")):
        if path.name == "run_files.py":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        code = _code_lines(lines)
        for number, line in code:
            if any(name in line for name in names):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def _code_lines(lines):
    """(number, line) of the lines outside docstrings and comments."""
    out, in_doc = [], False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        quotes = stripped.count('"""')
        if in_doc:
            in_doc = quotes % 2 == 0
            continue
        if stripped.startswith('"""'):
            in_doc = quotes == 1
            continue
        if stripped.startswith("#"):
            continue
        out.append((number, line.split("  #")[0]))
    return out


def test_history_shows_free_running_and_quality_beside_teacher_forced(tmp_path):
    import alignment_diagnostics
    folder = RunFolder(str(tmp_path / "output" / "trial_0"))
    os.makedirs(folder.path)
    free = FreeRunningScores(diagonal_score=0.9, reading_diagonal_score=0.95, focus_score=0.7,
                             end_reached_share=1.0, stopped_share=0.75, near_length_share=0.5,
                             runs_on_share=0.25, items=4)
    folder.append_record(_record(100))
    folder.append_record(_record(200, free_running=free,
                                 quality={"mean_mcd": 3.57, "mcd": [3.57], "wer": 0.96}))
    out = alignment_diagnostics.history(str(tmp_path / "output"), "trial_0")
    first, second = out["rows"]
    assert first["free_diagonal_score"] is None and first["mcd_db"] is None
    assert (second["free_reading_diagonal_score"], second["free_stopped_share"],
            second["mcd_db"], second["wer"]) == (0.95, 0.75, 3.57, 0.96)
    line = out["table"].splitlines()[3].split()
    assert line[:1] == ["200"] and line[4:11] == ["0.90", "0.95", "100%", "75%", "50%", "3.57",
                                                  "0.96"]
    assert os.path.getsize(out["plot_path"]) > 0
