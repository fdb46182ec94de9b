"""Shared fixtures: tiny hparams and a small generated corpus of wavs with a filelist (the
functions behind them live in tests/helpers.py).

`make_corpus(tmp_path, n, sr=22050)` writes `n` short wavs under `<tmp_path>/wavs/` and a filelist
`<tmp_path>/<name>.txt` whose paths are relative to the filelist's folder, and returns a
`helpers.Corpus`.
"""
from __future__ import annotations

import os
import sys

import pytest

# Tests import the flat modules (audio, data_utils, ...) from the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Tiny models run faster on one thread, and subprocesses (train.py, torchrun) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
torch.set_num_threads(1)

from helpers import tiny, write_corpus  # noqa: E402


@pytest.fixture
def make_corpus():
    """The `write_corpus` function: `make_corpus(tmp_path, 4, sr=22050)`."""
    return write_corpus


@pytest.fixture
def tiny_hp():
    """create_hparams("preset=tiny"): 20 mel channels, batch 4, no mel cache."""
    return tiny()


# ---------------------------------------------------------------------------- the fault campaign
# test_faults.py and test_fuzz.py share one workspace (a generated corpus, a fork server of
# trainers) and one tally, whose summary line ends the session's report.
def pytest_addoption(parser):
    group = parser.getgroup("fault campaign (tests/test_faults.py, tests/test_fuzz.py)")
    group.addoption("--fault-kills", type=int, default=4, dest="fault_kills",
                    help="kills of a trainer, each resumed and compared (default 4: inside a "
                         "checkpoint write, a snapshot write, a random moment, the hparams.json "
                         "write; then these again)")
    group.addoption("--fault-seed", type=int, default=0, dest="fault_seed",
                    help="draws the kill moments and the fuzzed inputs")
    group.addoption("--fuzz-examples", type=int, default=30, dest="fuzz_examples",
                    help="hypothesis examples per fuzzed target")


_FAULT_TALLY = pytest.StashKey()


@pytest.fixture(scope="session")
def fault_tally(request):
    """The `fault_harness.Tally` of the session."""
    from fault_harness import Tally  # only the fault tests need it

    return request.config.stash.setdefault(_FAULT_TALLY, Tally())


@pytest.fixture(scope="session")
def fault_workspace(tmp_path_factory, fault_tally):
    """A `fault_harness.Workspace`: corpus, base hparams, and the trainers' runs and outputs."""
    from fault_harness import Workspace

    return Workspace(str(tmp_path_factory.mktemp("faults")), fault_tally)


@pytest.fixture(scope="session")
def fault_seed(request) -> int:
    return request.config.getoption("fault_seed")


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    return request.config.getoption("fuzz_examples")


def pytest_terminal_summary(terminalreporter, config):
    tally = config.stash.get(_FAULT_TALLY, None)
    if tally is not None and tally.ran():
        terminalreporter.write_sep("-", "fault campaign")
        terminalreporter.write_line(tally.summary())
        for text in tally.files_lost + [f"traceback: {t}" for t in tally.tracebacks]:
            terminalreporter.write_line(f"  {text}")
