"""Figures (plotting.py): every picture renders, in one style, without pyplot state."""
from __future__ import annotations

import sys

import numpy as np

import plotting
from test_alignment_metrics import realistic_diagonal


def test_alignment_image():
    image = plotting.alignment_image(realistic_diagonal(120, 37), "teacher-forced, step 5", 0.15)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 20  # not a blank canvas


def test_spectrogram_and_gate_images():
    rng = np.random.default_rng(0)
    assert plotting.spectrogram_image(rng.normal(size=(20, 50)), "target").std() > 10
    assert plotting.gate_image(np.r_[np.zeros(40), np.ones(10)], rng.random(50)).std() > 10


def test_report_and_history_pngs(tmp_path):
    A = realistic_diagonal(80, 30)
    path = plotting.report_png(str(tmp_path / "a" / "r.png"), A, "step 5", "shown: x", 0.15,
                               [("a.wav", 0.9), ("b.wav", 0.3), ("c.wav", 0.05)], 0.1, "ru")
    assert open(path, "rb").read(4) == b"\x89PNG"
    rows = [{"step": s, "diagonal_score": d, "free_diagonal_score": d / 2, "red_flags": []}
            for s, d in ((100, 0.2), (200, 0.5))]
    path = plotting.history_png(str(tmp_path / "h.png"), rows, [1000, 3000], [0.1, 0.3], 0.05,
                                2000)
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_importing_plotting_sets_no_backend():
    # pyplot is never imported: the backend is whatever the user had (figures use Agg canvases)
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import sys, plotting, logger; "
                          "print('matplotlib.pyplot' in sys.modules)"],
                         capture_output=True, text=True, check=True,
                         cwd=__import__("os").path.dirname(__import__("os").path.dirname(
                             __import__("os").path.abspath(__file__))))
    assert out.stdout.strip() == "False"
