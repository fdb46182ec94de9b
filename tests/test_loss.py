"""Tests for loss_function.py and commons.guided_attention_matrix."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from commons import guided_attention_matrix
from hparams import create_hparams
from loss_function import (LossParts, Tacotron2Loss, guided_attention_loss,
                           guided_attention_weight)
from model import Tacotron2Output

SIGMA = 0.2


def slow_guided_loss(a: torch.Tensor, n_text: int, n_steps: int, sigma: float) -> float:
    """The formula of docs/alignment_metrics.md as an explicit double loop over one (T, N) block."""
    total = 0.0
    for t in range(n_steps):
        for n in range(n_text):
            w = 1.0 - math.exp(-((n / n_text - t / n_steps) ** 2) / (2 * sigma ** 2))
            total += w * float(a[t, n])
    return total / n_steps


def random_attention(steps: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(steps, tokens, generator=g) * 2, dim=1)


def diagonal_attention(steps: int, tokens: int) -> torch.Tensor:
    a = torch.zeros(steps, tokens)
    for t in range(steps):
        a[t, min(tokens - 1, int(t * tokens / steps))] = 1.0
    return a


def one(a: torch.Tensor) -> torch.Tensor:
    """Guided loss of a single un-padded (T, N) map."""
    steps, tokens = a.shape
    return guided_attention_loss(a[None], torch.tensor([tokens]), torch.tensor([steps]), SIGMA)


# ---------------------------------------------------------------------------- the matrix


def test_matrix_zero_outside_block_and_formula_inside():
    w = guided_attention_matrix(torch.tensor([3, 5]), torch.tensor([4, 2]), SIGMA, 6, 7)
    assert w.shape == (2, 6, 7) and w.dtype == torch.float32
    assert float(w[0, 4:].sum()) == 0.0 and float(w[0, :, 3:].sum()) == 0.0
    assert float(w[1, 2:].sum()) == 0.0 and float(w[1, :, 5:].sum()) == 0.0
    expected = 1 - math.exp(-((2 / 3 - 1 / 4) ** 2) / (2 * SIGMA ** 2))
    assert float(w[0, 1, 2]) == pytest.approx(expected, rel=1e-6)
    assert float(w[1, 0, 0]) == 0.0  # on the diagonal


# ---------------------------------------------------------------------------- the loss


def test_hard_diagonal_is_small():
    for steps, tokens in [(40, 40), (80, 20), (30, 45)]:
        assert float(one(diagonal_attention(steps, tokens))) < 0.01


def test_uniform_attention_is_the_mean_of_w():
    steps, tokens = 50, 20
    a = torch.full((steps, tokens), 1.0 / tokens)
    w = guided_attention_matrix(torch.tensor([tokens]), torch.tensor([steps]), SIGMA, steps, tokens)
    value = float(one(a))
    assert value == pytest.approx(float(w.mean()), rel=1e-5)
    assert 0.3 < value < 0.6


@pytest.mark.parametrize("token", [0, 1, 2])
def test_horizontal_band_is_large(token):
    a = torch.zeros(60, 30)
    a[:, token] = 1.0  # every step attends to one of the first tokens
    assert float(one(a)) > 0.2


def test_matches_explicit_double_loop_when_n_differs_from_t():
    steps, tokens = 40, 13
    a = random_attention(steps, tokens)
    assert float(one(a)) == pytest.approx(slow_guided_loss(a, tokens, steps, SIGMA), rel=1e-5)
    # A transposed implementation (t/N against n/T) gives a different value: the test above
    # would catch it.
    wrong = torch.tensor([[1 - math.exp(-((n / steps - t / tokens) ** 2) / (2 * SIGMA ** 2))
                           for n in range(tokens)] for t in range(steps)])
    transposed = float((wrong * a).sum() / steps)
    assert abs(transposed - float(one(a))) > 0.05


def test_invariant_to_extra_padding():
    steps, tokens = 30, 11
    a = random_attention(steps, tokens, seed=1)
    padded = torch.rand(1, steps + 9, tokens + 6)  # garbage in the padding must not count
    padded[0, :steps, :tokens] = a
    value = guided_attention_loss(padded, torch.tensor([tokens]), torch.tensor([steps]), SIGMA)
    assert float(value) == pytest.approx(float(one(a)), rel=1e-6)


def test_batch_is_the_mean_of_items_alone():
    shapes = [(30, 11), (17, 25), (40, 5)]
    maps = [random_attention(t, n, seed=i) for i, (t, n) in enumerate(shapes)]
    batch = torch.zeros(3, 40, 25)
    for i, a in enumerate(maps):
        batch[i, :a.shape[0], :a.shape[1]] = a
    value = guided_attention_loss(batch, torch.tensor([n for _, n in shapes]),
                                  torch.tensor([t for t, _ in shapes]), SIGMA)
    alone = [float(one(a)) for a in maps]
    assert float(value) == pytest.approx(sum(alone) / 3, rel=1e-5)


def test_gradient_flows_to_alignments_only_inside_block():
    a = random_attention(10, 6)[None].repeat(1, 1, 1)
    padded = torch.zeros(1, 12, 8)
    padded[:, :10, :6] = a
    padded.requires_grad_(True)
    guided_attention_loss(padded, torch.tensor([6]), torch.tensor([10]), SIGMA).backward()
    assert float(padded.grad[0, 10:].abs().sum()) == 0.0
    assert float(padded.grad[0, :, 6:].abs().sum()) == 0.0
    assert float(padded.grad[0, :10, :6].abs().sum()) > 0.0


# ---------------------------------------------------------------------------- Tacotron2Loss


def make_output_and_batch(r: int = 1, mel_lengths=(9, 6), text_lengths=(5, 3), extra: int = 0,
                          seed: int = 0):
    """Random outputs/targets; padding (and `extra` more frames) holds garbage."""
    g = torch.Generator().manual_seed(seed)
    n_mel = 4
    t_max = -(-(max(mel_lengths) + extra) // r) * r
    n_max = max(text_lengths)
    b = len(mel_lengths)
    lengths = torch.tensor(mel_lengths)
    gate_target = (torch.arange(t_max)[None] >= (lengths[:, None] - 1)).float()
    batch = SimpleNamespace(text=torch.ones(b, n_max, dtype=torch.long),
                            text_lengths=torch.tensor(text_lengths),
                            mel=torch.randn(b, n_mel, t_max, generator=g), gate=gate_target,
                            mel_lengths=lengths)
    alignments = torch.softmax(torch.randn(b, t_max // r, n_max, generator=g), dim=2)
    output = Tacotron2Output(torch.randn(b, n_mel, t_max, generator=g),
                             torch.randn(b, n_mel, t_max, generator=g),
                             torch.randn(b, t_max, generator=g), alignments)
    return output, batch


def crop(output, batch, t_keep):
    out = Tacotron2Output(output.mel[:, :, :t_keep], output.mel_postnet[:, :, :t_keep],
                          output.gate[:, :t_keep], output.alignments)
    b = SimpleNamespace(**vars(batch))
    b.mel, b.gate = batch.mel[:, :, :t_keep], batch.gate[:, :t_keep]
    return out, b


def test_loss_parts_and_total():
    hp = create_hparams("preset=tiny")
    output, batch = make_output_and_batch()
    parts = Tacotron2Loss(hp)(output, batch, guide_weight=2.5)
    assert isinstance(parts, LossParts)
    expected = parts.mel + parts.mel_postnet + parts.gate + 2.5 * parts.guided_attn
    assert float(parts.total) == pytest.approx(float(expected), rel=1e-6)
    # guided_attn is computed (for logging) even when its weight is 0.
    zero = Tacotron2Loss(hp)(output, batch, guide_weight=0.0)
    assert float(zero.guided_attn) == pytest.approx(float(parts.guided_attn))
    assert float(zero.total) == pytest.approx(float(parts.mel + parts.mel_postnet + parts.gate),
                                              rel=1e-6)


@pytest.mark.parametrize("mel_loss", ["mse", "l1"])
def test_mel_and_gate_losses_use_true_lengths_only(mel_loss):
    hp = create_hparams(f"preset=tiny,mel_loss={mel_loss}")
    output, batch = make_output_and_batch()
    parts = Tacotron2Loss(hp)(output, batch, guide_weight=1.0)
    power = 2 if mel_loss == "mse" else 1
    for name in ("mel", "mel_postnet"):
        total, count = 0.0, 0
        for i, length in enumerate(batch.mel_lengths.tolist()):
            error = getattr(output, name)[i, :, :length] - batch.mel[i, :, :length]
            total += float((error.abs() ** power).sum())
            count += length * batch.mel.shape[1]
        assert float(getattr(parts, name)) == pytest.approx(total / count, rel=1e-5)
    bce, frames = 0.0, 0
    for i, length in enumerate(batch.mel_lengths.tolist()):
        bce += float(torch.nn.functional.binary_cross_entropy_with_logits(
            output.gate[i, :length], batch.gate[i, :length], reduction="sum"))
        frames += length
    assert float(parts.gate) == pytest.approx(bce / frames, rel=1e-5)


def test_gate_positive_weight_scales_the_last_frame():
    output, batch = make_output_and_batch(mel_lengths=(1, 1), text_lengths=(2, 2))
    # Every scored frame is a last frame (target 1), so the BCE scales with pos_weight exactly.
    light = Tacotron2Loss(create_hparams("preset=tiny"))(output, batch, 0.0).gate
    heavy = Tacotron2Loss(create_hparams("preset=tiny,gate_positive_weight=5"))(output, batch, 0.0)
    assert float(heavy.gate) == pytest.approx(5 * float(light), rel=1e-5)


@pytest.mark.parametrize("mel_loss", ["mse", "l1"])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_losses_unchanged_by_extra_padding(r, mel_loss):
    hp = create_hparams(f"preset=tiny,n_frames_per_step={r},mel_loss={mel_loss}")
    output, batch = make_output_and_batch(r=r, mel_lengths=(9, 5), extra=7)
    full = Tacotron2Loss(hp)(output, batch, guide_weight=1.0)
    t_keep = -(-9 // r) * r
    cropped = Tacotron2Loss(hp)(*crop(output, batch, t_keep), guide_weight=1.0)
    for name in ("mel", "mel_postnet", "gate"):
        assert float(getattr(full, name)) == pytest.approx(float(getattr(cropped, name)), rel=1e-6)
    changed = SimpleNamespace(**vars(batch))
    changed.mel = batch.mel.clone()
    changed.mel[0, :, 9:] = 100.0  # padding content is never scored
    changed.mel[1, :, 5:] = -100.0
    again = Tacotron2Loss(hp)(output, changed, guide_weight=1.0)
    assert float(again.mel) == pytest.approx(float(full.mel), rel=1e-6)


@pytest.mark.parametrize("r", [2, 3])
def test_guided_term_uses_ceil_decoder_lengths(r):
    hp = create_hparams(f"preset=tiny,n_frames_per_step={r}")
    output, batch = make_output_and_batch(r=r, mel_lengths=(10, 7), text_lengths=(5, 4))
    parts = Tacotron2Loss(hp)(output, batch, guide_weight=1.0)
    steps = [math.ceil(10 / r), math.ceil(7 / r)]
    expected = sum(slow_guided_loss(output.alignments[i], n, steps[i], hp.guide_sigma)
                   for i, n in enumerate((5, 4))) / 2
    assert float(parts.guided_attn) == pytest.approx(expected, rel=1e-5)
    floor_steps = torch.tensor([10 // r, 7 // r])
    floor = guided_attention_loss(output.alignments, batch.text_lengths, floor_steps,
                                  hp.guide_sigma)
    assert abs(float(floor) - expected) > 1e-4


def test_loss_is_float32_under_bf16_outputs():
    hp = create_hparams("preset=tiny")
    output, batch = make_output_and_batch()
    low = Tacotron2Output(*(t.to(torch.bfloat16) for t in output))
    parts = Tacotron2Loss(hp)(low, batch, guide_weight=1.0)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in parts)


# ---------------------------------------------------------------------------- the weight schedule


def schedule(step: int, hp) -> float:
    """The formula of docs/alignment_metrics.md, written out independently."""
    w = hp.guide_loss_weight * max(hp.guide_lowbound, hp.guide_scale * hp.guide_decay ** step)
    if step >= hp.guide_decay_start and hp.guide_decay_steps > 0:
        w *= max(0.0, 1.0 - (step - hp.guide_decay_start) / hp.guide_decay_steps)
    return w


@pytest.mark.parametrize("step, approx", [
    (0, 20.0), (9999, 7.3576), (10000, 7.3576), (23000, 1.7443), (60000, 0.1),
    (110000, 0.0), (200000, 0.0)])
def test_schedule_default_values(step, approx):
    hp = create_hparams()
    value = guided_attention_weight(step, hp)
    assert isinstance(value, float)
    assert value == pytest.approx(schedule(step, hp), rel=1e-12, abs=1e-15)
    assert value == pytest.approx(approx, rel=1e-3, abs=1e-9)


def test_schedule_without_fade_and_switched_off():
    hp = create_hparams("guide_decay_steps=0")
    assert guided_attention_weight(200000, hp) == pytest.approx(2.0 * 0.1)
    assert guided_attention_weight(500, create_hparams("guide_loss_weight=0")) == 0.0


def test_schedule_fade_is_linear():
    hp = create_hparams("guide_decay=1.0,guide_scale=1.0,guide_decay_start=100,"
                        "guide_decay_steps=200")
    values = [guided_attention_weight(s, hp) for s in (0, 100, 200, 300, 400)]
    assert values == pytest.approx([2.0, 2.0, 1.0, 0.0, 0.0])
