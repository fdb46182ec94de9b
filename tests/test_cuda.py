"""The CUDA path: autocast, the GradScaler, TF32, CUDA graphs, NCCL, pinned memory.

Every test here is marked `cuda` and skipped (and counted as skipped) where no GPU is available;
`bash bench/device_check.sh` runs them first thing on a lent GPU. Equality tests turn TF32 off
(`exact_matmuls`), since TF32 matmuls differ from fp32 by ~1e-3, and take gradients of a
`dropout_free_model` (train mode without dropout), since cuDNN's LSTM has no backward in eval
mode.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

import train
from bench.reference_decoder import reference_forward
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from data_utils import Batch, prepare_dataloaders
from helpers import (dropout_free_model, gate_trajectories, grads_of_everything, lively_model,
                     make_batch, seeded_model, step_run, threshold_with_distinct_stops, tiny,
                     write_token_corpus)
from hparams import create_hparams
from loss_function import Tacotron2Loss
from model import Tacotron2
from train import setup_device, train_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def exact_matmuls():
    """fp32 matmuls and convolutions without TF32 for the test, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------- training steps
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_default_model_training_steps(device, precision, graphs):
    """The default model through `train.train_step` (autocast on CUDA, the GradScaler, TF32)."""
    assert setup_device("cuda")[-1].type == "cuda"
    assert torch.backends.cuda.matmul.allow_tf32  # training turns TF32 on for fp32 matmuls
    hp = create_hparams(f"precision={precision},cuda_graphs={graphs}")
    torch.manual_seed(0)
    model = Tacotron2(hp).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    criterion = Tacotron2Loss(hp)
    run = step_run(hp, device)
    batch = make_batch(hp, [60, 45, 33, 20], [230, 170, 120, 70])
    batch = Batch(*(None if t is None else t.pin_memory() for t in batch))  # as the loader's
    updated = 0
    for step in range(6):
        before = [p.detach().clone() for p in model.parameters()]
        scale = scaler.get_scale() if scaler.is_enabled() else None
        losses, grad_norm, _ = train_step(model, batch, criterion, optimizer, scaler, run).read()
        run.step += 1
        assert all(math.isfinite(v) for v in losses.values()), losses
        changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        if scaler.is_enabled() and not math.isfinite(grad_norm):
            assert not changed and scaler.get_scale() < scale  # the scaler skipped and backed off
        else:
            assert math.isfinite(grad_norm) and changed
            updated += 1
    assert updated >= 3  # fp16: only the first steps may overflow at the initial scale
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() < math.inf


# ---------------------------------------------------------------------------- step equality
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("preset, r", [("tiny", 1), ("tiny", 2), ("default", 1)])
def test_optimised_step_equals_plain_loop_on_cuda(device, exact_matmuls, preset, r, graphs):
    hp = create_hparams(f"preset={preset},n_frames_per_step={r},cuda_graphs={graphs}")
    model = dropout_free_model(hp).to(device)  # both loops compute one function
    batch = make_batch(hp, [37, 25, 9], [61, 40, 17]).to(device)
    for attempt in range(2):  # the second call replays the graphs captured in the first
        fast = model.forward_batch(batch)
        grads_fast = grads_of_everything(model, fast)
        plain = reference_forward(model, batch.text, batch.text_lengths, batch.mel,
                                  batch.mel_lengths)
        grads_plain = grads_of_everything(model, plain)
        for a, b in zip(fast, plain):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        for (name, _), a, b in zip(model.named_parameters(), grads_fast, grads_plain):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=f"{name} ({attempt})")


def test_graphed_dropout_equals_plain_loop_with_its_masks(device, exact_matmuls):
    hp = tiny("n_frames_per_step=2,p_attention_dropout=0.3,p_decoder_dropout=0.3,"
              "p_prenet_dropout=0,p_encoder_dropout=0,p_postnet_dropout=0,cuda_graphs=true")
    model = seeded_model(hp).to(device).train()
    batch = make_batch(hp, [17, 11, 5], [30, 21, 9]).to(device)
    criterion = Tacotron2Loss(hp)
    for _ in range(2):  # warm-up and capture, then replays
        graphed = model.forward_batch(batch)
        grads_graphed = torch.autograd.grad(criterion(graphed, batch, 1.0).total,
                                            list(model.parameters()))
    masks = model.decoder.static_loop().last_dropout_masks()
    plain = reference_forward(model, batch.text, batch.text_lengths, batch.mel,
                              batch.mel_lengths, dropout_masks=masks)
    grads_plain = torch.autograd.grad(criterion(plain, batch, 1.0).total,
                                      list(model.parameters()))
    for a, b in zip(graphed, plain):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for (name, _), a, b in zip(model.named_parameters(), grads_graphed, grads_plain):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_graphed_step_matches_eager_step_under_autocast(device, precision):
    hp = create_hparams()
    model = dropout_free_model(hp).to(device)
    batch = make_batch(hp, [50, 31, 12], [180, 120, 40]).to(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    results = []
    for graphs in (False, True, True):
        model.decoder.cuda_graphs = graphs
        with torch.autocast("cuda", dtype=dtype):
            out = model.forward_batch(batch)
        results.append((out, grads_of_everything(model, out)))
    eager, grads_eager = results[0]
    for out, grads in results[1:]:
        assert out.mel.dtype == dtype
        for a, b in zip(out, eager):
            torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
        for (name, _), a, b in zip(model.named_parameters(), grads, grads_eager):
            assert torch.isfinite(a).all(), name
            scale = float(b.float().abs().max()) + 1e-3
            assert float((a.float() - b.float()).abs().max()) <= 0.05 * scale, name


@pytest.mark.parametrize("graphs", [False, True])
def test_teacher_forced_decoder_makes_no_host_sync(device, graphs):
    """Forward and backward of the decoder loop never wait for the GPU (after a warm-up)."""
    hp = create_hparams(f"cuda_graphs={graphs}")
    model = seeded_model(hp).to(device).train()
    batch = make_batch(hp, [40, 30], [150, 90]).to(device)
    memory = model.encode(batch.text, batch.text_lengths).detach().requires_grad_()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.decoder(memory, batch.mel, batch.text_lengths)
        (out.mel.float().square().mean() + out.gate.float().square().mean()
         + out.alignments.square().mean()).backward()

    step()  # warm-up: captures the graphs (capturing synchronises)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p.grad).all() for p in model.decoder.parameters())


def test_text_lengths_on_the_cpu_spare_the_encoders_sync(device, exact_matmuls):
    """Pinned CPU text lengths (as collated) next to CUDA tensors: the same outputs as lengths
    on the GPU, and the encoder never waits for the GPU."""
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=10,gate_threshold=1.0,cuda_graphs=true")
    model = seeded_model(hp).to(device).eval()
    batch = make_batch(hp, [9, 7, 6, 3], [20, 15, 12, 7])  # as collated: longest text first
    cpu_lengths = batch.text_lengths.pin_memory()
    on_device = batch.to(device)
    with torch.no_grad():
        for lengths in (on_device.text_lengths, cpu_lengths):  # the second replays the graphs
            forced = model(on_device.text, lengths, on_device.mel, on_device.mel_lengths)
            free = model.inference(on_device.text, lengths)
            if lengths is on_device.text_lengths:
                reference = (forced, free)
        for a, b in zip(tuple(forced) + tuple(free), reference[0] + reference[1]):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            memory = model.encode(on_device.text, cpu_lengths)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(memory).all()


# ---------------------------------------------------------------------------- inference
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("r", [1, 2])
def test_batched_inference_equals_items_alone_on_cuda(device, exact_matmuls, r, graphs):
    hp = tiny(f"p_prenet_dropout=0,n_frames_per_step={r},max_decoder_steps=25,"
              f"cuda_graphs={graphs}")
    model = lively_model(hp).to(device)
    batch = make_batch(hp, [9, 6, 3, 7], [5, 5, 5, 5], seed=5, extra_text=2).to(device)
    theta, stops, margin = threshold_with_distinct_stops(gate_trajectories(model, batch))
    assert len(set(stops)) >= 3 and margin > 1e-5, (stops, margin)  # the premise of the test
    model.decoder.gate_threshold = theta  # graphs captured above must follow the new threshold
    together = model.inference(batch.text, batch.text_lengths)
    steps = [s if s is not None else 25 for s in stops]
    assert together.mel_lengths.tolist() == [s * r for s in steps]
    assert together.hit_max_steps.tolist() == [s is None for s in stops]
    for i, n in enumerate(batch.text_lengths.tolist()):
        alone = model.inference(batch.text[i:i + 1, :n], batch.text_lengths[i:i + 1])
        length = int(alone.mel_lengths[0])
        assert length == int(together.mel_lengths[i])
        torch.testing.assert_close(together.mel_postnet[i, :, :length], alone.mel_postnet[0],
                                   atol=1e-4, rtol=1e-4)
        assert float(together.mel_postnet[i, :, length:].abs().sum()) == 0.0
        torch.testing.assert_close(together.alignments[i, :length // r, :n],
                                   alone.alignments[0], atol=1e-4, rtol=1e-4)


def test_graphed_inference_draws_fresh_prenet_dropout_per_replay(device):
    """The prenet's dropout (on at inference) inside a captured graph: reproducible for a
    seed, different for another seed."""
    hp = tiny("max_decoder_steps=20,gate_threshold=1.0,cuda_graphs=true")
    model = seeded_model(hp).to(device).eval()
    batch = make_batch(hp, [9, 6], [5, 5]).to(device)
    model.inference(batch.text, batch.text_lengths)  # warm-up and capture
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(model.inference(batch.text, batch.text_lengths).mel)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert all(torch.isfinite(m).all() for m in outs)


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_from_gpu_loads_on_cpu_and_back(device, exact_matmuls, tmp_path):
    hp = tiny("p_prenet_dropout=0,max_decoder_steps=12,gate_threshold=1.0,cuda_graphs=true")
    model = seeded_model(hp).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(hp, [7, 5, 3], [14, 11, 6])
    loss = Tacotron2Loss(hp)(model.forward_batch(batch.to(device)), batch.to(device), 1.0)
    loss.total.backward()
    optimizer.step()
    path = save_checkpoint(str(tmp_path / "checkpoint_1"), model=model, optimizer=optimizer,
                           hp=hp, step=1)
    ckpt = load_checkpoint(path, map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    cpu_model, cpu_hp, _ = model_from_checkpoint(path, "cpu")
    gpu_model, _, _ = model_from_checkpoint(path, device)
    assert cpu_hp.cuda_graphs  # the run's settings travel with it
    for name, value in model.state_dict().items():
        assert torch.equal(gpu_model.state_dict()[name], value), name
        assert torch.equal(cpu_model.state_dict()[name], value.cpu()), name
    # The same weights decode the same on both devices.
    model.eval()
    with torch.no_grad():
        on_gpu = model.inference(batch.text.to(device), batch.text_lengths.to(device))
        on_cpu = cpu_model.inference(batch.text, batch.text_lengths)
    torch.testing.assert_close(on_gpu.mel_postnet.cpu(), on_cpu.mel_postnet, atol=1e-3,
                               rtol=1e-3)
    # The optimizer state saved on the GPU resumes on the GPU.
    resumed = torch.optim.Adam(gpu_model.parameters(), lr=1e-3)
    resumed.load_state_dict(ckpt["optimizer"])
    state = next(iter(resumed.state.values()))
    assert state["exp_avg"].device.type == "cuda"


# ---------------------------------------------------------------------------- distributed, data
@pytest.mark.parametrize("graphs", [False, True])
def test_nccl_ddp_one_process(device, exact_matmuls, tmp_path, graphs):
    """DistributedDataParallel over NCCL in one process: its all-reduced gradients equal the
    bare model's, and train_step trains through it."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        hp = tiny(f"cuda_graphs={graphs}")
        model = dropout_free_model(hp).to(device)  # both passes compute the same function
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        batch = make_batch(hp, [9, 7, 6, 3], [20, 15, 12, 7])
        on_device = batch.to(device)
        criterion = Tacotron2Loss(hp)
        grads = []
        for net in (model, ddp):
            model.zero_grad(set_to_none=True)
            out = net(on_device.text, on_device.text_lengths, on_device.mel,
                      on_device.mel_lengths)
            criterion(out, on_device, 1.0).total.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for (name, _), a, b in zip(model.named_parameters(), *grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        run = step_run(hp, device)
        for _ in range(3):
            losses, grad_norm, _ = train_step(ddp, batch, criterion, optimizer, scaler, run).read()
            run.step += 1
            assert math.isfinite(losses["total"]) and math.isfinite(grad_norm)
    finally:
        dist.destroy_process_group()


def test_dataloader_workers_deliver_pinned_batches(device, tmp_path):
    train_list, val_list = write_token_corpus(str(tmp_path / "data"), n_train=12, n_val=4)
    hp = create_hparams(f"preset=tiny,training_files={train_list},validation_files={val_list},"
                        f"text_cleaners=[basic_cleaners],num_workers=2,cuda_graphs=true")
    train_loader, val_loader, _, _ = prepare_dataloaders(hp, str(tmp_path / "run" / "mel_cache"))
    train_loader.batch_sampler.set_epoch(0)
    model = seeded_model(hp).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    run = step_run(hp, device)
    seen = 0
    # the workers start now, with CUDA initialised in this process: from a fork server
    assert torch.cuda.is_initialized()
    assert train_loader.multiprocessing_context.get_start_method() == "forkserver"
    for batch in train_loader:
        assert batch.mel.is_pinned() and batch.text.is_pinned()  # copied with non_blocking
        losses, _, _ = train_step(model, batch, Tacotron2Loss(hp), optimizer, scaler, run).read()
        run.step += 1
        assert math.isfinite(losses["total"])
        seen += 1
    assert seen == len(train_loader) > 0
    assert next(iter(val_loader)).mel.is_pinned()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_cli_on_cuda(tmp_path, precision):
    """`python train.py --device cuda` end to end: steps, validation, free running, a
    checkpoint, with finite losses."""
    train_list, val_list = write_token_corpus(str(tmp_path / "data"), n_train=12, n_val=4)
    status = train.main([
        f"--output_directory={tmp_path / 'output'}", f"--log_directory={tmp_path / 'logs'}",
        f"--tensorboard_directory={tmp_path / 'runs'}", "--device", "cuda", "--max_steps", "6",
        f"--hparams=preset=tiny,training_files={train_list},validation_files={val_list},"
        f"text_cleaners=[basic_cleaners],precision={precision},cuda_graphs=true,"
        f"iters_per_validation=3,num_workers=2"])
    assert status == 0
    records = [json.loads(line) for line in
               (tmp_path / "output" / "trial_0" / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    for record in records:
        assert all(math.isfinite(v) for v in record["losses"].values()), record["losses"]
        assert record["free_running"] is not None
    assert torch.load(tmp_path / "output" / "trial_0" / "checkpoint_6",
                      weights_only=True)["iteration"] == 6


# Last: inductor compiles for a minute or more, and device_check.sh's time limit should cut
# this test rather than the others.
def test_compiled_graphed_step_equals_eager(device, exact_matmuls):
    """hp.compile (inductor) inside the CUDA graphs: teacher forcing with gradients, and free
    running."""
    hp = tiny("n_frames_per_step=2,max_decoder_steps=30,gate_threshold=1.0")
    model = dropout_free_model(hp).to(device)
    batch = make_batch(hp, [17, 11, 5], [30, 21, 9]).to(device)
    eager = model.forward_batch(batch)
    grads_eager = grads_of_everything(model, eager)
    free_eager = model.inference(batch.text, batch.text_lengths)
    model.decoder.cuda_graphs = model.decoder.use_compile = True
    for _ in range(2):
        fast = model.forward_batch(batch)
        grads_fast = grads_of_everything(model, fast)
        free_fast = model.inference(batch.text, batch.text_lengths)
        for a, b in zip(fast, eager):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        for (name, _), a, b in zip(model.named_parameters(), grads_fast, grads_eager):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)
        for a, b in zip(free_fast, free_eager):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
