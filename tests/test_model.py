"""Tests for commons.sequence_mask, layers.py and model.py.

Tiny dims throughout; the default-size model is only constructed (keys, shapes, parameter count).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.reference_decoder import reference_forward
from commons import decoder_lengths, sequence_mask
from data_utils import Batch
from decoder_graphs import TEXT_BUCKET, padded_text_length
from decoder_step import StepOutput
from helpers import (DROPOUTS, dropout_free_model, gate_trajectories, grads_of_everything,
                     lively_model, make_batch, seeded_model, threshold_with_distinct_stops, tiny,
                     without_dropout)
from hparams import create_hparams
from layers import ConvNorm, LinearNorm
from loss_function import Tacotron2Loss
from model import (Attention, DecoderInferenceOutput, DecoderOutput, DecoderState, Tacotron2,
                   Tacotron2Output)
from text.symbols import get_symbols

# NVIDIA's state_dict at default hparams (docs/nvidia_compatibility.md), in NVIDIA's order.
NVIDIA_STATE_DICT = [
    ("embedding.weight", (148, 512)),
    ("encoder.convolutions.0.0.conv.weight", (512, 512, 5)),
    ("encoder.convolutions.0.0.conv.bias", (512,)),
    ("encoder.convolutions.0.1.weight", (512,)),
    ("encoder.convolutions.0.1.bias", (512,)),
    ("encoder.convolutions.0.1.running_mean", (512,)),
    ("encoder.convolutions.0.1.running_var", (512,)),
    ("encoder.convolutions.0.1.num_batches_tracked", ()),
    ("encoder.convolutions.1.0.conv.weight", (512, 512, 5)),
    ("encoder.convolutions.1.0.conv.bias", (512,)),
    ("encoder.convolutions.1.1.weight", (512,)),
    ("encoder.convolutions.1.1.bias", (512,)),
    ("encoder.convolutions.1.1.running_mean", (512,)),
    ("encoder.convolutions.1.1.running_var", (512,)),
    ("encoder.convolutions.1.1.num_batches_tracked", ()),
    ("encoder.convolutions.2.0.conv.weight", (512, 512, 5)),
    ("encoder.convolutions.2.0.conv.bias", (512,)),
    ("encoder.convolutions.2.1.weight", (512,)),
    ("encoder.convolutions.2.1.bias", (512,)),
    ("encoder.convolutions.2.1.running_mean", (512,)),
    ("encoder.convolutions.2.1.running_var", (512,)),
    ("encoder.convolutions.2.1.num_batches_tracked", ()),
    ("encoder.lstm.weight_ih_l0", (1024, 512)),
    ("encoder.lstm.weight_hh_l0", (1024, 256)),
    ("encoder.lstm.bias_ih_l0", (1024,)),
    ("encoder.lstm.bias_hh_l0", (1024,)),
    ("encoder.lstm.weight_ih_l0_reverse", (1024, 512)),
    ("encoder.lstm.weight_hh_l0_reverse", (1024, 256)),
    ("encoder.lstm.bias_ih_l0_reverse", (1024,)),
    ("encoder.lstm.bias_hh_l0_reverse", (1024,)),
    ("decoder.prenet.layers.0.linear_layer.weight", (256, 80)),
    ("decoder.prenet.layers.1.linear_layer.weight", (256, 256)),
    ("decoder.attention_rnn.weight_ih", (4096, 768)),
    ("decoder.attention_rnn.weight_hh", (4096, 1024)),
    ("decoder.attention_rnn.bias_ih", (4096,)),
    ("decoder.attention_rnn.bias_hh", (4096,)),
    ("decoder.attention_layer.query_layer.linear_layer.weight", (128, 1024)),
    ("decoder.attention_layer.memory_layer.linear_layer.weight", (128, 512)),
    ("decoder.attention_layer.v.linear_layer.weight", (1, 128)),
    ("decoder.attention_layer.location_layer.location_conv.conv.weight", (32, 2, 31)),
    ("decoder.attention_layer.location_layer.location_dense.linear_layer.weight", (128, 32)),
    ("decoder.decoder_rnn.weight_ih", (4096, 1536)),
    ("decoder.decoder_rnn.weight_hh", (4096, 1024)),
    ("decoder.decoder_rnn.bias_ih", (4096,)),
    ("decoder.decoder_rnn.bias_hh", (4096,)),
    ("decoder.linear_projection.linear_layer.weight", (80, 1536)),
    ("decoder.linear_projection.linear_layer.bias", (80,)),
    ("decoder.gate_layer.linear_layer.weight", (1, 1536)),
    ("decoder.gate_layer.linear_layer.bias", (1,)),
    ("postnet.convolutions.0.0.conv.weight", (512, 80, 5)),
    ("postnet.convolutions.0.0.conv.bias", (512,)),
    ("postnet.convolutions.0.1.weight", (512,)),
    ("postnet.convolutions.0.1.bias", (512,)),
    ("postnet.convolutions.0.1.running_mean", (512,)),
    ("postnet.convolutions.0.1.running_var", (512,)),
    ("postnet.convolutions.0.1.num_batches_tracked", ()),
    ("postnet.convolutions.1.0.conv.weight", (512, 512, 5)),
    ("postnet.convolutions.1.0.conv.bias", (512,)),
    ("postnet.convolutions.1.1.weight", (512,)),
    ("postnet.convolutions.1.1.bias", (512,)),
    ("postnet.convolutions.1.1.running_mean", (512,)),
    ("postnet.convolutions.1.1.running_var", (512,)),
    ("postnet.convolutions.1.1.num_batches_tracked", ()),
    ("postnet.convolutions.2.0.conv.weight", (512, 512, 5)),
    ("postnet.convolutions.2.0.conv.bias", (512,)),
    ("postnet.convolutions.2.1.weight", (512,)),
    ("postnet.convolutions.2.1.bias", (512,)),
    ("postnet.convolutions.2.1.running_mean", (512,)),
    ("postnet.convolutions.2.1.running_var", (512,)),
    ("postnet.convolutions.2.1.num_batches_tracked", ()),
    ("postnet.convolutions.3.0.conv.weight", (512, 512, 5)),
    ("postnet.convolutions.3.0.conv.bias", (512,)),
    ("postnet.convolutions.3.1.weight", (512,)),
    ("postnet.convolutions.3.1.bias", (512,)),
    ("postnet.convolutions.3.1.running_mean", (512,)),
    ("postnet.convolutions.3.1.running_var", (512,)),
    ("postnet.convolutions.3.1.num_batches_tracked", ()),
    ("postnet.convolutions.4.0.conv.weight", (80, 512, 5)),
    ("postnet.convolutions.4.0.conv.bias", (80,)),
    ("postnet.convolutions.4.1.weight", (80,)),
    ("postnet.convolutions.4.1.bias", (80,)),
    ("postnet.convolutions.4.1.running_mean", (80,)),
    ("postnet.convolutions.4.1.running_var", (80,)),
    ("postnet.convolutions.4.1.num_batches_tracked", ()),
]
NVIDIA_PARAMETERS = 28_193_153


# ---------------------------------------------------------------------------- commons


def test_sequence_mask_values_and_width():
    mask = sequence_mask(torch.tensor([3, 1, 0]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False],
                             [False] * 4]
    assert sequence_mask(torch.tensor([2, 5])).shape == (2, 5)


@pytest.mark.parametrize("r, expected", [(1, [7, 8, 1]), (2, [4, 4, 1]), (3, [3, 3, 1])])
def test_decoder_lengths_is_ceil(r, expected):
    assert decoder_lengths(torch.tensor([7, 8, 1]), r).tolist() == expected
    assert decoder_lengths(np.array([7, 8, 1]), r).tolist() == expected
    assert [decoder_lengths(n, r) for n in (7, 8, 1)] == expected


# ---------------------------------------------------------------------------- layers


@pytest.mark.parametrize("gain", ["linear", "tanh", "relu", "sigmoid"])
def test_linear_norm_xavier_bound(gain):
    torch.manual_seed(0)
    layer = LinearNorm(300, 200, w_init_gain=gain)
    bound = torch.nn.init.calculate_gain(gain) * math.sqrt(6.0 / (300 + 200))
    w = layer.linear_layer.weight
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound  # uniform over the whole range, not a narrower init
    assert layer(torch.zeros(2, 300)).shape == (2, 200)


def test_conv_norm_same_padding_and_names():
    layer = ConvNorm(4, 6, kernel_size=5, w_init_gain="tanh")
    assert layer(torch.randn(2, 4, 11)).shape == (2, 6, 11)
    assert sorted(layer.state_dict()) == ["conv.bias", "conv.weight"]
    bound = torch.nn.init.calculate_gain("tanh") * math.sqrt(6.0 / (4 * 5 + 6 * 5))
    assert layer.conv.weight.abs().max() <= bound


def test_conv_norm_even_kernel_error():
    with pytest.raises(ValueError, match=r"layers.py: ConvNorm needs an odd kernel_size .* got 4"):
        ConvNorm(2, 2, kernel_size=4)


def test_even_location_kernel_error():
    with pytest.raises(ValueError,
                       match=r"model.py: attention_location_kernel_size must be odd, got 6"):
        Tacotron2(tiny("attention_location_kernel_size=6"))


# ---------------------------------------------------------------------------- NVIDIA compatibility


def test_state_dict_matches_nvidia():
    model = Tacotron2(create_hparams())
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == NVIDIA_STATE_DICT
    assert sum(p.numel() for p in model.parameters()) == NVIDIA_PARAMETERS


def test_nvidia_shaped_state_dict_loads_strictly():
    model = Tacotron2(create_hparams())
    state = {k: torch.zeros(s) for k, s in NVIDIA_STATE_DICT}
    model.load_state_dict(state, strict=True)
    assert float(model.decoder.attention_rnn.weight_ih.detach().abs().sum()) == 0.0


@pytest.mark.parametrize("r", [2, 3])
def test_frames_per_step_changes_only_projection_and_gate(r):
    base = {k: s for k, s in NVIDIA_STATE_DICT}
    model = Tacotron2(create_hparams(f"n_frames_per_step={r}"))
    changed = {k: tuple(v.shape) for k, v in model.state_dict().items()
               if base[k] != tuple(v.shape)}
    assert changed == {
        "decoder.linear_projection.linear_layer.weight": (80 * r, 1536),
        "decoder.linear_projection.linear_layer.bias": (80 * r,),
        "decoder.gate_layer.linear_layer.weight": (r, 1536),
        "decoder.gate_layer.linear_layer.bias": (r,),
    }


def test_alphabet_size_follows_symbol_set():
    model = Tacotron2(tiny("symbol_set=russian,text_cleaners=[russian_cleaners]"))
    assert model.embedding.weight.shape[0] == len(get_symbols("russian"))


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("r", [1, 2, 3])
def test_forward_shapes_and_padding_masks(r):
    hp = tiny(f"n_frames_per_step={r}")
    batch = make_batch(hp, [7, 4, 2], [13, 9, 5])
    out = seeded_model(hp).forward_batch(batch)
    assert isinstance(out, Tacotron2Output)
    b, n_mel, t_max = batch.mel.shape
    assert out.mel.shape == out.mel_postnet.shape == (b, n_mel, t_max)
    assert out.gate.shape == (b, t_max)
    assert out.alignments.shape == (b, t_max // r, 7)
    for i, length in enumerate(batch.mel_lengths.tolist()):
        assert float(out.mel[i, :, length:].detach().abs().sum()) == 0.0
        assert float(out.mel_postnet[i, :, length:].detach().abs().sum()) == 0.0
        assert torch.all(out.gate[i, length:] == 1e3)
        assert torch.all(out.gate[i, :length] != 1e3)
        text_len = int(batch.text_lengths[i])
        # Rows sum to 1 over the real tokens and put nothing on text padding.
        torch.testing.assert_close(out.alignments[i].sum(1), torch.ones(t_max // r))
        assert float(out.alignments[i, :, text_len:].detach().abs().sum()) == 0.0


def test_mask_padding_off_leaves_padded_frames():
    hp = tiny("mask_padding=false")
    batch = make_batch(hp, [5, 3], [9, 4])
    out = seeded_model(hp).forward_batch(batch)
    assert float(out.mel[1, :, 4:].detach().abs().sum()) > 0
    assert torch.all(out.gate[1, 4:] != 1e3)


def test_eval_forward_is_deterministic_given_seed():
    hp = tiny()  # prenet dropout 0.5 stays on in eval
    batch = make_batch(hp, [6, 3], [10, 7])
    model = seeded_model(hp).eval()
    with torch.no_grad():
        torch.manual_seed(7)
        first = model.forward_batch(batch)
        torch.manual_seed(7)
        again = model.forward_batch(batch)
        torch.manual_seed(8)
        other = model.forward_batch(batch)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    # Another seed differs: the prenet's dropout really is on in eval mode.
    assert not torch.equal(first.mel, other.mel)


def test_prenet_dropout_zero_is_identity_in_eval():
    hp = tiny("p_prenet_dropout=0")
    batch = make_batch(hp, [6, 3], [10, 7])
    model = seeded_model(hp).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.forward_batch(batch)
        torch.manual_seed(2)
        b = model.forward_batch(batch)
    assert torch.equal(a.mel_postnet, b.mel_postnet)


def test_dropout_free_model_computes_eval_modes_function_in_train_mode():
    """`helpers.dropout_free_model`, which the gradient equality tests use (cuDNN's LSTM has no
    backward in eval mode): its LSTMs train, and it computes what the same weights compute in eval
    mode, the same under any seed. Turning any one of `DROPOUTS` back on changes that, so the
    list names every dropout the model draws."""
    hp = tiny()
    batch = make_batch(hp, [6, 4, 3], [10, 8, 5])

    def passes(model):
        runs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            out = model.forward_batch(batch)
            runs.append(tuple(out) + grads_of_everything(model, out))
        return runs

    def equal(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b))

    model = dropout_free_model(hp)
    assert model.encoder.lstm.training and model.decoder.attention_rnn.training
    first, second = passes(model)
    assert equal(first, second)
    in_eval = passes(seeded_model(without_dropout(hp)).eval())[0]
    assert equal(first, in_eval)
    for name in DROPOUTS:
        noisy = seeded_model(without_dropout(hp).replace(**{name: 0.5})).train()
        assert not equal(*passes(noisy)), name


def test_extra_padding_changes_nothing():
    hp = tiny("p_prenet_dropout=0")
    model = seeded_model(hp).eval()
    short = make_batch(hp, [6, 3], [10, 7], seed=3)
    long = make_batch(hp, [6, 3], [10, 7], seed=4, extra_text=5, extra_frames=6)
    # Same real content, different (random) padding content and width.
    long.text[:, :6] = short.text
    long.mel[:, :, :10] = short.mel
    with torch.no_grad():
        a = model.forward_batch(short)
        b = model.forward_batch(long)
    torch.testing.assert_close(b.mel_postnet[:, :, :10], a.mel_postnet, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.gate[:, :10], a.gate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.alignments[:, :10, :6], a.alignments, atol=1e-5, rtol=1e-5)


def test_unsorted_batch_matches_sorted():
    hp = tiny("p_prenet_dropout=0")
    model = seeded_model(hp).eval()
    batch = make_batch(hp, [3, 7, 5], [6, 12, 9])
    order = torch.tensor([1, 2, 0])
    sorted_batch = Batch(*(t[order] for t in batch[:5]))
    with torch.no_grad():
        a = model.forward_batch(batch)
        b = model.forward_batch(sorted_batch)
    torch.testing.assert_close(a.mel_postnet[order], b.mel_postnet, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ fast step vs plain loop


@pytest.mark.parametrize("r", [1, 2, 3])
def test_optimised_step_equals_reference_decoder(r):
    hp = tiny(f"n_frames_per_step={r}")
    batch = make_batch(hp, [7, 5, 2], [14, 11, 4])
    model = dropout_free_model(hp)  # both loops compute the same function
    fast = model.forward_batch(batch)
    grads_fast = grads_of_everything(model, fast)
    slow = reference_forward(model, batch.text, batch.text_lengths, batch.mel, batch.mel_lengths,
                             per_step_memory_projection=True)
    grads_slow = grads_of_everything(model, slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("r", [1, 2])
def test_deferred_weight_gradients_equal_per_step_autograd(r):
    hp = tiny(f"n_frames_per_step={r},p_attention_dropout=0.3,p_decoder_dropout=0.3")
    batch = make_batch(hp, [7, 5, 2], [14, 11, 4])
    model = seeded_model(hp).train()  # dropouts on: the recorded states are the dropped ones
    grads = []
    for defer in (True, False):
        model.decoder.defer_weight_grads = defer
        torch.manual_seed(11)
        out = model.forward_batch(batch)
        loss = Tacotron2Loss(hp)(out, batch, guide_weight=1.0).total
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_decode_step_state_is_an_explicit_value():
    hp = tiny("p_prenet_dropout=0")
    model = seeded_model(hp).eval()
    memory = torch.randn(2, 5, hp.encoder_embedding_dim)
    decoder = model.decoder
    ctx = decoder.memory_context(memory, torch.tensor([5, 3]))
    state = decoder.initial_state(memory)
    gates = decoder.step_input(torch.zeros(2, hp.n_mel_channels), ctx)
    with torch.no_grad():
        frame, gate, weights, new = decoder.decode_step(gates, state, ctx)
        frame2, _, _, new2 = decoder.decode_step(gates, state, ctx)
    assert isinstance(new, DecoderState)
    assert frame.shape == (2, hp.n_mel_channels) and gate.shape == (2, 1)
    assert weights.shape == (2, 5) and float(weights[1, 3:].sum()) == 0.0
    assert float(state.attention_weights_cum.abs().sum()) == 0.0  # the old state is untouched
    assert torch.equal(frame, frame2) and torch.equal(new.attention_cell, new2.attention_cell)
    torch.testing.assert_close(new.attention_weights_cum, weights)


def test_decode_step_returns_a_step_output():
    hp = tiny("p_prenet_dropout=0")
    decoder = seeded_model(hp).eval().decoder
    memory = torch.randn(2, 5, hp.encoder_embedding_dim)
    ctx = decoder.memory_context(memory, torch.tensor([5, 3]))
    with torch.no_grad():
        out = decoder.decode_step(decoder.step_input(torch.zeros(2, hp.n_mel_channels), ctx),
                                  decoder.initial_state(memory), ctx)
    assert isinstance(out, StepOutput) and out.state.attention_weights is out.attention


def test_attention_forward_is_nvidias_computation():
    """Attention.forward (folded location kernel, finite mask) against NVIDIA's module calls."""
    hp = tiny()
    decoder = seeded_model(hp).decoder
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 6, hp.encoder_embedding_dim, generator=g)
    lengths = torch.tensor([6, 4])
    keep = sequence_mask(lengths, 6)
    ctx = decoder.memory_context(memory, lengths)
    query = torch.randn(2, hp.attention_rnn_dim, generator=g)
    previous = torch.softmax(torch.randn(2, 6, generator=g), 1) * keep
    cumulative = previous + torch.rand(2, 6, generator=g) * keep
    attention = decoder.attention_layer
    with torch.no_grad():
        context, weights = attention(query, previous, cumulative, ctx)
        # NVIDIA: query layer, location conv then dense, v over tanh, -inf mask, softmax, bmm.
        location = attention.location_layer(torch.stack((previous, cumulative), 1))
        energies = attention.v(torch.tanh(attention.query_layer(query.unsqueeze(1)) + location
                                          + attention.memory_layer(memory))).squeeze(-1)
        expected = torch.softmax(energies.masked_fill(~keep, float("-inf")), 1)
        expected_context = torch.bmm(expected.unsqueeze(1), memory).squeeze(1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(context, expected_context, atol=1e-6, rtol=1e-5)
    assert float(weights[1, 4:].abs().sum()) == 0.0


def test_decoder_returns_named_tuples():
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=6,gate_threshold=1.0")
    model = seeded_model(hp).eval()
    batch = make_batch(hp, [5, 3], [9, 6])
    with torch.no_grad():
        memory = model.encode(batch.text, batch.text_lengths)
        forced = model.decoder(memory, batch.mel, batch.text_lengths)
        free = model.decoder.inference(memory, batch.text_lengths)
    assert isinstance(forced, DecoderOutput)
    assert forced.mel.shape == batch.mel.shape and forced.gate.shape == (2, 9)
    assert forced.alignments.shape == (2, 9, 5)
    assert isinstance(free, DecoderInferenceOutput)
    assert free.mel.shape == (2, hp.n_mel_channels, 6) and free.alignments.shape == (2, 6, 5)
    assert free.steps.tolist() == [6, 6] and free.hit_max_steps.all()


# ---------------------------------------------------------------------------- training


def _params_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("graphs", ["false", "true"])  # the eager loop and the static loop
@pytest.mark.parametrize("r", [1, 2, 3])
def test_one_adam_step_changes_every_parameter(r, graphs):
    hp = tiny(f"n_frames_per_step={r},cuda_graphs={graphs}")
    batch = make_batch(hp, [7, 5, 3, 2], [14, 11, 7, 4])
    model = seeded_model(hp).train()
    before = _params_snapshot(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = Tacotron2Loss(hp)(model.forward_batch(batch), batch, guide_weight=1.0)
    assert all(torch.isfinite(t) for t in loss)
    loss.total.backward()
    optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_bf16_autocast_trains_a_step_on_cpu():
    hp = tiny()
    batch = make_batch(hp, [7, 5, 3], [14, 11, 6])
    model = seeded_model(hp).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _params_snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_batch(batch)
        loss = Tacotron2Loss(hp)(out, batch, guide_weight=1.0)
    assert out.mel.dtype == torch.bfloat16  # autocast really was on
    assert all(bool(torch.isfinite(t)) for t in loss)
    loss.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    # Attention rows still sum to one (softmax in float32), padding gets exactly zero.
    torch.testing.assert_close(out.alignments[2].float().sum(1), torch.ones(14), atol=1e-2, rtol=0)
    assert float(out.alignments[2, :, 3:].detach().abs().sum()) == 0.0


# ---------------------------------------------------------------------------- inference


@pytest.mark.parametrize("r", [1, 2])
def test_teacher_forced_and_free_running_agree(r):
    hp = tiny(f"p_prenet_dropout=0,n_frames_per_step={r},gate_threshold=1.0,max_decoder_steps=12")
    model = seeded_model(hp).eval()
    batch = make_batch(hp, [6, 4], [5, 5])
    free = model.inference(batch.text, batch.text_lengths)
    assert free.mel.shape[2] == 12 * r and free.hit_max_steps.all()
    # Feeding the free-running output back as the teacher makes every step identical.
    with torch.no_grad():
        forced = model(batch.text, batch.text_lengths, free.mel, free.mel_lengths)
    torch.testing.assert_close(forced.mel, free.mel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced.mel_postnet, free.mel_postnet, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced.gate, free.gate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced.alignments, free.alignments, atol=1e-5, rtol=1e-5)
    # The first step only sees the go frame, so any teacher gives the same first step.
    with torch.no_grad():
        other = model(batch.text, batch.text_lengths, torch.randn_like(free.mel), free.mel_lengths)
    torch.testing.assert_close(other.mel[:, :, :r], free.mel[:, :, :r], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other.alignments[:, 0], free.alignments[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other.mel[:, :, r:], free.mel[:, :, r:])


@pytest.mark.parametrize("r", [1, 2])
def test_batched_inference_equals_items_alone(r):
    hp = tiny(f"p_prenet_dropout=0,n_frames_per_step={r},max_decoder_steps=25")
    model = lively_model(hp)
    batch = make_batch(hp, [9, 6, 3, 7], [5, 5, 5, 5], seed=5, extra_text=2)
    theta, stops, margin = threshold_with_distinct_stops(gate_trajectories(model, batch))
    assert len(set(stops)) >= 3 and margin > 1e-5, (stops, margin)  # the premise of the test
    model.decoder.gate_threshold = theta
    together = model.inference(batch.text, batch.text_lengths)
    steps = [s if s is not None else 25 for s in stops]
    assert together.mel_lengths.tolist() == [s * r for s in steps]
    assert together.hit_max_steps.tolist() == [s is None for s in stops]
    width = together.mel.shape[2]
    assert width == max(steps) * r
    for i, n in enumerate(batch.text_lengths.tolist()):
        alone = model.inference(batch.text[i:i + 1, :n], batch.text_lengths[i:i + 1])
        length = int(alone.mel_lengths[0])
        assert length == int(together.mel_lengths[i])
        assert bool(alone.hit_max_steps[0]) == bool(together.hit_max_steps[i])
        for name in ("mel", "mel_postnet"):
            a, b = getattr(together, name)[i], getattr(alone, name)[0]
            torch.testing.assert_close(a[:, :length], b, atol=1e-5, rtol=1e-5)
            assert float(a[:, length:].abs().sum()) == 0.0
        torch.testing.assert_close(together.gate[i, :length], alone.gate[0], atol=1e-5, rtol=1e-5)
        assert torch.all(together.gate[i, length:] == 1e3)
        torch.testing.assert_close(together.alignments[i, :length // r, :n],
                                   alone.alignments[0], atol=1e-5, rtol=1e-5)
        assert float(together.alignments[i, length // r:].abs().sum()) == 0.0
        assert float(together.alignments[i, :, n:].abs().sum()) == 0.0


def test_inference_stops_on_gate_and_reports_max_steps():
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=7")
    model = seeded_model(hp).eval()
    batch = make_batch(hp, [5, 3], [4, 4])
    model.decoder.gate_threshold = 0.0  # every gate probability exceeds 0: stop after step 1
    out = model.inference(batch.text, batch.text_lengths)
    assert out.mel_lengths.tolist() == [1, 1] and not out.hit_max_steps.any()
    assert out.mel.shape == (2, hp.n_mel_channels, 1)
    model.decoder.gate_threshold = 1.0  # never
    out = model.inference(batch.text, batch.text_lengths)
    assert out.mel_lengths.tolist() == [7, 7] and out.hit_max_steps.all()
    assert out.alignments.shape == (2, 7, 5)


# ------------------------------------------------------------------ static loop (cuda_graphs)
# On a CPU the static-buffer loop of decoder_graphs.py runs uncaptured; these tests pin it to the
# eager loop. tests/test_cuda.py checks the captured CUDA graphs against the eager loop on a GPU.


@pytest.mark.parametrize("r", [1, 2, 3])
def test_static_loop_equals_eager_loop(r):
    hp = tiny(f"n_frames_per_step={r}")
    batch = make_batch(hp, [7, 5, 2], [14, 11, 4])
    model = dropout_free_model(hp)  # both loops compute the same function
    eager = model.forward_batch(batch)
    grads_eager = grads_of_everything(model, eager)
    model.decoder.cuda_graphs = True
    for attempt in range(2):  # the second call reuses the first call's buffers
        static = model.forward_batch(batch)
        grads_static = grads_of_everything(model, static)
        # The static loop pads the text to a bucket; the outputs are cut back to its width.
        assert padded_text_length(7) == TEXT_BUCKET and static.alignments.shape[2] == 7
        for a, b in zip(static, eager):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for (name, _), a, b in zip(model.named_parameters(), grads_static, grads_eager):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"{name} ({attempt})")


def test_static_loop_text_capacity_grows_and_serves_shorter_texts():
    """One set of buffers per batch size: a longer text widens it once, shorter texts reuse
    it padded, and every batch still gets the eager loop's result."""
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=8,gate_threshold=1.0")
    model = seeded_model(hp).eval()
    loop = model.decoder.static_loop()
    for text_lengths, expected_width in (([7, 4], 32), ([40, 9], 64), ([6, 5], 64)):
        batch = make_batch(hp, text_lengths, [9, 6])
        model.decoder.cuda_graphs = False
        with torch.no_grad():
            eager = model.forward_batch(batch)
            eager_free = model.inference(batch.text, batch.text_lengths)
        model.decoder.cuda_graphs = True
        with torch.no_grad():
            static = model.forward_batch(batch)
            static_free = model.inference(batch.text, batch.text_lengths)
        for a, b in zip(tuple(static) + tuple(static_free), tuple(eager) + tuple(eager_free)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert loop.buffer_sets() == [("free", 2, expected_width), ("teacher", 2, expected_width)]


def test_static_loop_dropout_equals_reference_with_its_masks():
    """Training mode: the static loop draws the LSTM dropout masks for all steps; the plain
    NVIDIA-style loop given the same masks computes the same outputs and gradients."""
    hp = tiny("n_frames_per_step=2,p_attention_dropout=0.3,p_decoder_dropout=0.3,"
              "p_prenet_dropout=0,p_encoder_dropout=0,p_postnet_dropout=0,cuda_graphs=true")
    batch = make_batch(hp, [7, 5, 2], [14, 11, 4])
    model = seeded_model(hp).train()
    criterion = Tacotron2Loss(hp)
    static = model.forward_batch(batch)
    grads_static = torch.autograd.grad(criterion(static, batch, guide_weight=1.0).total,
                                       list(model.parameters()))
    masks = model.decoder.static_loop().last_dropout_masks()
    assert masks.attention.shape == (7, 3, hp.attention_rnn_dim)
    assert masks.decoder.shape == (7, 3, hp.decoder_rnn_dim)
    for mask in masks:  # F.dropout's multipliers, about 30% zeros
        values = mask.unique().tolist()
        assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
        assert 0.2 < float((mask == 0).float().mean()) < 0.4
    reference = reference_forward(model, batch.text, batch.text_lengths, batch.mel,
                                  batch.mel_lengths, dropout_masks=masks)
    grads_reference = torch.autograd.grad(criterion(reference, batch, guide_weight=1.0).total,
                                          list(model.parameters()))
    for a, b in zip(static, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads_static, grads_reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_static_loop_refuses_a_backward_after_its_buffers_were_overwritten():
    hp = tiny("cuda_graphs=true")
    batch = make_batch(hp, [5, 3], [9, 6])
    model = seeded_model(hp).train()
    first = model.forward_batch(batch)
    model.forward_batch(batch)  # same shapes: same buffers
    with pytest.raises(RuntimeError, match="overwrote its saved states"):
        first.mel.sum().backward()


def test_static_loop_bf16_autocast_matches_eager_loop():
    hp = tiny()
    batch = make_batch(hp, [7, 5, 3], [14, 11, 6])
    model = dropout_free_model(hp)
    results = []
    for graphs in (False, True):
        model.decoder.cuda_graphs = graphs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_batch(batch)
        results.append((out, grads_of_everything(model, out)))
    (eager, grads_eager), (static, grads_static) = results
    assert static.mel.dtype == eager.mel.dtype == torch.bfloat16
    for a, b in zip(static, eager):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    for (name, _), a, b in zip(model.named_parameters(), grads_static, grads_eager):
        scale = float(b.abs().max()) + 1e-3
        assert float((a - b).abs().max()) <= 0.05 * scale, name


@pytest.mark.parametrize("r, check_every", [(1, 4), (2, 3), (1, 1)])
def test_static_free_running_equals_eager(r, check_every):
    """Items stop at different steps; reading the stop flags only every few steps changes
    nothing, the output is cut where the last item stopped."""
    hp = tiny(f"p_prenet_dropout=0,n_frames_per_step={r},max_decoder_steps=25")
    model = lively_model(hp)
    batch = make_batch(hp, [9, 6, 3, 7], [5, 5, 5, 5], seed=5, extra_text=2)
    theta, stops, margin = threshold_with_distinct_stops(gate_trajectories(model, batch))
    assert len(set(stops)) >= 3 and margin > 1e-5, (stops, margin)  # the premise of the test
    for threshold in (theta, 0.0):  # items stopping apart; all stopping after the first step
        model.decoder.gate_threshold = threshold
        model.decoder.cuda_graphs = False
        eager = model.inference(batch.text, batch.text_lengths)
        model.decoder.cuda_graphs = True
        model.decoder.static_loop().stop_check_every = check_every
        static = model.inference(batch.text, batch.text_lengths)
        assert static.mel_lengths.tolist() == eager.mel_lengths.tolist()
        assert static.hit_max_steps.tolist() == eager.hit_max_steps.tolist()
        for a, b in zip(static, eager):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_static_free_running_reports_max_steps():
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=7,gate_threshold=1.0,cuda_graphs=true")
    model = seeded_model(hp).eval()
    model.decoder.static_loop().stop_check_every = 3  # 7 is not a multiple: the last read is at 7
    batch = make_batch(hp, [5, 3], [4, 4])
    out = model.inference(batch.text, batch.text_lengths)
    assert out.mel_lengths.tolist() == [7, 7] and out.hit_max_steps.all()
    assert out.alignments.shape == (2, 7, 5)


@pytest.mark.slow
def test_compiled_step_in_static_loop_equals_eager():
    """hp.compile inside the static loop (forward steps and the recomputing backward).

    Dynamo + AOTAutograd with the aot_eager backend: the tracing and the autograd plumbing that
    inductor gets too, without inductor's C++ code generation (minutes on two CPU cores);
    tests/test_cuda.py runs the inductor step on a GPU.
    """
    hp = tiny("n_frames_per_step=2")
    batch = make_batch(hp, [7, 5, 2], [14, 11, 4])
    model = dropout_free_model(hp)
    eager = model.forward_batch(batch)
    grads_eager = grads_of_everything(model, eager)
    decoder = model.decoder
    decoder.cuda_graphs = decoder.use_compile = True
    decoder._compiled_step = torch.compile(decoder.decode_step, backend="aot_eager",
                                           dynamic=True)
    compiled = model.forward_batch(batch)
    grads_compiled = grads_of_everything(model, compiled)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_attention_window_keeps_free_running_attention_monotonic():
    """hp.attention_window: each free-running step attends within [focus - 1, focus + w] of the
    previous step's focus; 0 leaves decoding as it was, and teacher forcing never uses it."""
    text, lengths = torch.randint(1, 40, (2, 20)), torch.tensor([20, 15])
    outputs = {}
    for window in (0, 3):
        hp = create_hparams(f"preset=tiny,attention_window={window}")
        torch.manual_seed(0)
        model = Tacotron2(hp).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            outputs[window] = model.inference(text, lengths)
    def jumps(out):  # argmax moves between consecutive decoded steps of each item
        steps = decoder_lengths(out.mel_lengths, 1).tolist()
        return torch.cat([out.alignments[b, :steps[b]].argmax(-1).diff() for b in range(2)])

    assert jumps(outputs[3]).max() <= 3 and jumps(outputs[3]).min() >= -1
    previous = torch.zeros(2, 12)
    previous[0, 5], previous[1, 0] = 1.0, 1.0  # focus on token 5, and on token 0
    ctx = SimpleNamespace(attention_window=3)
    outside = Attention.outside_window(previous, ctx).squeeze(1)
    assert (~outside[0]).nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    assert (~outside[1]).nonzero().flatten().tolist() == [0, 1, 2, 3]
    torch.manual_seed(0)
    plain = Tacotron2(create_hparams("preset=tiny")).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        again = plain.inference(text, lengths)
    assert torch.equal(again.alignments, outputs[0].alignments)
