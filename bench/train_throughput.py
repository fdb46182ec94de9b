"""Training throughput: real mel frames per second, padding share, seconds per step, peak memory.

    python bench/train_throughput.py --threads 1    # CPU comparison, a few minutes (see below)
    python bench/train_throughput.py --loop optimised --r 3 --bucketing on --steps 20
    python bench/train_throughput.py --preset default --batch_size 128 --device cuda \\
        --precision bf16 --lengths ljspeech      # the comparison, the full model, one GPU
    python bench/train_throughput.py --loop optimised --preset default --batch_size 128 \\
        --device cuda --precision bf16 --cuda_graphs on   # the CUDA-graph step alone
    python bench/train_throughput.py --loop optimised --filelist filelists/demo_en_train.txt

A step is exactly `train.train_step`: forward under autocast (`commons.autocast_context`),
`Tacotron2Loss` with the guided-attention weight of the step, backward through the GradScaler (a
no-op unless fp16), gradient clipping and the Adam step of `train.make_optimizer`. Batches are
built before the clock starts (no data loading is timed except the copy to the device that
`train_step` does), the first `--warmup` steps are not timed, and the clock is read after
`torch.cuda.synchronize` on CUDA: `train_step` leaves its figures on the device, as training
does between log lines.

Figures:
  real frames/s  mel frames inside each item's true length, summed over the timed steps, divided
                 by their wall time; padding frames do not count, so bucketing and r are judged
                 by the useful work they get through.
  padding        share of the padded mel area (batch x longest, rounded up to a multiple of r)
                 that is padding, over the timed batches.
  s/step         wall time of the timed steps / their number.
  peak MB        CUDA: torch.cuda.max_memory_allocated over the timed steps. CPU: the process's
                 peak resident set (getrusage ru_maxrss), which includes torch itself and the
                 prebuilt batches; each configuration of the comparison runs in its own process
                 so the figures do not mix.

Data: by default a synthetic stream, no audio decoded. `--pool` items get a duration drawn from
a length profile (`--lengths`), 1 + duration * sampling_rate / hop_length mel frames of random
log-mel values and about 15 random symbol ids per second of audio:
  ljspeech  1-10 s, mean 6.5 s (a Beta(2.75, 1.75) on [1, 10]; LJSpeech: 1.1-10.1 s, mean 6.6 s)
  short     1.5-3.5 s, mean 2.5 s (a Beta(2, 2)); the espeak demo corpus is 1.3-5.4 s, 80% of
            it within 2.4-3.4 s. The CPU default, so that a step of the small model takes ~1 s.
`--filelist PATH` uses real mels through `data_utils.TextMelDataset` instead (computed before the
clock starts). Batches come from `data_utils.LengthBucketSampler` over the pool: length buckets
with `--bucketing on`, plain random batches with `--bucketing off`.

`--loop reference` decodes with bench/reference_decoder.py's plain NVIDIA-style loop (same
weights, same loss); `--loop optimised` with `Tacotron2.forward`. `--cuda_graphs on` sets
`hp.cuda_graphs` (the optimised step replayed as CUDA graphs, decoder_graphs.py; on a CPU the
same static-buffer loop runs uncaptured) and `--compile on` sets `hp.compile`. `--loop compare`
(the default) runs, each in a fresh process and one after the other:
  baseline    reference loop, random batches, r=1
  optimised   optimised loop, random batches, r=1   (the loop alone)
  +bucketing  optimised loop, length buckets, r=1
  +r=R        optimised loop, length buckets, r=R (`--r`, default 3)
and prints a table with the speed-up of each row's real frames/s over the baseline. It then
prints the padding share of bucketed and random batches for the ljspeech profile at batch 64
over 13,100 items (sampler arithmetic only). Every run ends with one JSON line of all figures.

The model is `--preset` plus `--hparams` overrides; the bench-only preset `small` (the default)
is the `default` preset with smaller layers (SMALL_MODEL below, 1.9 M parameters).

A run that runs out of memory (CUDA, or the host for a CPU run) prints one line saying so and a
JSON line whose `out_of_memory` holds the configuration, the error's first line and the memory
figures, and exits with status 3, so that a caller can tell it from a failure (status 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Run from anywhere: the project's modules live in the folder above this one.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import devices  # noqa: E402
from data_utils import (Batch, LengthBucketSampler, TextMelCollate, TextMelDataset,  # noqa: E402
                        padding_share, read_filelist)
from hparams import PRESETS, HParams, create_hparams  # noqa: E402
from loss_function import Tacotron2Loss  # noqa: E402
from messages import one_line  # noqa: E402
from model import Tacotron2  # noqa: E402
from reference_decoder import reference_forward  # noqa: E402
from text.symbols import get_symbols  # noqa: E402
from train import make_optimizer, setup_device, train_step  # noqa: E402

# The bench's small model: big enough that the decoder loop dominates as in the full model,
# small enough for a CPU step of about a second at batch 16 on short utterances.
SMALL_MODEL = ("symbols_embedding_dim=128,encoder_embedding_dim=128,attention_rnn_dim=256,"
               "decoder_rnn_dim=256,prenet_dim=64,postnet_embedding_dim=128,attention_dim=64")

# name: (shortest s, longest s, Beta a, Beta b); durations = lo + (hi - lo) * Beta(a, b).
LENGTH_PROFILES: Dict[str, Tuple[float, float, float, float]] = {
    "ljspeech": (1.0, 10.0, 2.75, 1.75),  # mean 1 + 9 * 2.75 / 4.5 = 6.5 s
    "short": (1.5, 3.5, 2.0, 2.0),  # mean 2.5 s
}
TOKENS_PER_SECOND = 15.0  # LJSpeech reads at ~15 characters per second

# Rows of `--loop compare`: (name, loop, bucketing, r; None = the --r given, default 3).
COMPARE_ROWS: Tuple[Tuple[str, str, str, Optional[int]], ...] = (
    ("baseline", "reference", "off", 1),
    ("optimised", "optimised", "off", 1),
    ("+bucketing", "optimised", "on", 1),
    ("+r", "optimised", "on", None),
)
COMPARE_DEFAULT_R = 3
EXIT_OUT_OF_MEMORY = 3

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("compare", "optimised", "reference"), default="compare",
                        help="decoder loop of a single run, or the comparison (default)")
    parser.add_argument("--preset", default="small", choices=["small", *PRESETS],
                        help="model and training hparams; small = default + SMALL_MODEL")
    parser.add_argument("--hparams", default="", help="further overrides, name=value,...")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--r", type=int, default=None,
                        help="n_frames_per_step (default: the preset's; compare: last row's, 3)")
    parser.add_argument("--bucketing", choices=("on", "off"), default="on",
                        help="length-bucketed or random batches (compare sets it per row)")
    parser.add_argument("--compile", choices=("on", "off"), default="off",
                        help="torch.compile the decoder step (optimised loop only)")
    parser.add_argument("--cuda_graphs", choices=("on", "off"), default="off",
                        help="the decoder loop on static buffers, CUDA graphs on a GPU "
                             "(optimised loop only)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--lengths", choices=tuple(LENGTH_PROFILES), default=None,
                        help="synthetic length profile (default: short on CPU, ljspeech on CUDA)")
    parser.add_argument("--pool", type=int, default=13100,
                        help="synthetic items the sampler draws batches from (LJSpeech's count)")
    parser.add_argument("--filelist", default=None, help="real data instead of synthetic")
    parser.add_argument("--data_root", default="", help="folder for the filelist's relative paths")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "pool"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.r is not None and args.r < 1:
        parser.error("--r must be >= 1")
    if args.loop == "reference" and "on" in (args.compile, args.cuda_graphs):
        parser.error("--compile on and --cuda_graphs on apply to the optimised loop only")
    if args.compile == "on" and args.warmup < 1:
        parser.error("--compile on needs --warmup >= 1 (compilation happens in the warm-up)")
    if args.lengths is None:
        args.lengths = "short" if args.device == "cpu" else "ljspeech"  # GPUs get real lengths
    return args


def build_hparams(args: argparse.Namespace) -> HParams:
    """The preset, SMALL_MODEL for `small`, --hparams, then the bench flags."""
    preset = "default" if args.preset == "small" else args.preset
    small = SMALL_MODEL if args.preset == "small" else ""
    text = ",".join(s for s in (f"preset={preset}", small, args.hparams) if s)
    hp = create_hparams(text)
    changes: Dict[str, Any] = dict(batch_size=args.batch_size, precision=args.precision,
                                   compile=args.compile == "on",
                                   cuda_graphs=args.cuda_graphs == "on",
                                   bucket_batches=args.bucketing == "on")
    if args.r is not None:
        changes["n_frames_per_step"] = args.r
    return hp.replace(**changes)


# ---------------------------------------------------------------------------------- data
def synthetic_lengths(profile: str, n_items: int, hp: HParams,
                      seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(text lengths, mel frames) of `n_items` utterances drawn from a length profile.

    Returns:
        two int64 arrays (n_items,): symbols (~TOKENS_PER_SECOND per second, +-20%) and
        `1 + samples // hop_length` mel frames, as `TextMelDataset.mel_lengths_estimate`.
    """
    lo, hi, a, b = LENGTH_PROFILES[profile]
    rng = np.random.default_rng(seed)
    seconds = lo + (hi - lo) * rng.beta(a, b, n_items)
    frames = 1 + (seconds * hp.sampling_rate).astype(np.int64) // hp.hop_length
    tokens = np.maximum(1, np.rint(seconds * TOKENS_PER_SECOND * rng.uniform(0.8, 1.2, n_items)))
    return tokens.astype(np.int64), frames


class SyntheticItems:
    """Dataset-like items: random symbol ids and random log-mels of the given lengths.

    Item `i` is the same tensor pair whenever it is asked for (seeded by `seed + i`).
    """

    def __init__(self, text_lengths: np.ndarray, mel_lengths: np.ndarray, hp: HParams, seed: int):
        self.text_lengths = text_lengths
        self.mel_lengths = mel_lengths
        self.n_symbols = len(get_symbols(hp.symbol_set))
        self.n_mel = hp.n_mel_channels
        self.seed = seed

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + int(index))
        ids = torch.randint(1, self.n_symbols, (int(self.text_lengths[index]),),
                            generator=generator)  # id 0 is the pad symbol
        # Log-mel magnitudes sit around -11 (silence) to +2; the values do not change the cost.
        mel = torch.randn(self.n_mel, int(self.mel_lengths[index]), generator=generator) * 2 - 5
        return ids, mel


def load_items(args: argparse.Namespace, hp: HParams):
    """(items with __getitem__, mel lengths for the sampler, a description of the data)."""
    if args.filelist:
        dataset = TextMelDataset(read_filelist(args.filelist, args.data_root), hp)
        return dataset, np.asarray(dataset.mel_lengths_estimate), f"filelist {args.filelist}"
    text_lengths, mel_lengths = synthetic_lengths(args.lengths, args.pool, hp, args.seed)
    items = SyntheticItems(text_lengths, mel_lengths, hp, args.seed)
    return items, mel_lengths, f"synthetic, {args.lengths} lengths, pool {args.pool}"


def make_sampler(mel_lengths: Sequence[int], hp: HParams, seed: int) -> LengthBucketSampler:
    """Training's batch sampler (drop_last, so every timed batch is full)."""
    return LengthBucketSampler(mel_lengths, hp.batch_size, shuffle=True, seed=seed,
                               bucket_size_multiplier=hp.bucket_size_multiplier,
                               drop_last=True, bucket=hp.bucket_batches)


def build_batches(items, mel_lengths: np.ndarray, hp: HParams, count: int, seed: int,
                  pin: bool) -> List[Batch]:
    """The first `count` batches of the sampler's epochs, collated (and pinned for CUDA)."""
    sampler = make_sampler(mel_lengths, hp, seed)
    if len(sampler) == 0:
        raise ValueError(f"train_throughput.py: {len(mel_lengths)} items make no full batch of "
                         f"{hp.batch_size}")
    collate = TextMelCollate(hp.n_frames_per_step)
    batches: List[Batch] = []
    epoch = 0
    while len(batches) < count:
        sampler.set_epoch(epoch)
        for indices in sampler:
            batch = collate([items[i] for i in indices])
            if pin:
                batch = Batch(*(None if t is None else t.pin_memory() for t in batch))
            batches.append(batch)
            if len(batches) == count:
                break
        epoch += 1
    return batches


def sampler_padding(profile: str, batch_size: int, n_items: int, hp: HParams,
                    seed: int = 0) -> Dict[str, float]:
    """Padding share of one epoch of bucketed and of random batches (sampler arithmetic only)."""
    _, frames = synthetic_lengths(profile, n_items, hp, seed)
    shares = {}
    for name, bucket in (("bucketed", True), ("random", False)):
        sampler = make_sampler(frames, hp.replace(batch_size=batch_size, bucket_batches=bucket),
                               seed)
        shares[name] = padding_share(sampler.epoch_batches(), frames)
    return shares


# ---------------------------------------------------------------------------------- timing
class ReferenceLoop(torch.nn.Module):
    """Called like `Tacotron2` but decodes with the plain loop of bench/reference_decoder.py.

    A module around the model, so that whatever `train_step` asks of a model (parameters,
    buffers, train/eval) reaches the wrapped one.
    """

    def __init__(self, model: Tacotron2):
        super().__init__()
        self.model = model

    def forward(self, text, text_lengths, mel, mel_lengths):
        return reference_forward(self.model, text, text_lengths, mel, mel_lengths)


@dataclass
class StepRun:
    """The few fields of `train.Run` that `train.train_step` reads."""
    hp: HParams
    device: torch.device
    step: int = 0
    world_size: int = 1
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("train_throughput"))


def _rss_mb() -> float:
    """Peak resident set of this process so far, in MB (ru_maxrss is KiB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    """Times one configuration (args.loop is optimised or reference); returns its figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = build_hparams(args)
    _, _, device = setup_device(args.device)
    items, mel_lengths, data = load_items(args, hp)
    batches = build_batches(items, mel_lengths, hp, args.warmup + args.steps, args.seed,
                            pin=device.type != "cpu")

    torch.manual_seed(args.seed)  # the same initial weights in every configuration
    model = Tacotron2(hp).to(device).train()
    step_model = ReferenceLoop(model) if args.loop == "reference" else model
    optimizer = make_optimizer(model, hp)
    scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
    criterion = Tacotron2Loss(hp)
    run = StepRun(hp, device)

    rss_before = _rss_mb()
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == args.warmup:
            devices.synchronize(device)
            devices.reset_peak_memory(device)
            start = time.perf_counter()
        step = train_step(step_model, batch, criterion, optimizer, scaler, run)
        run.step += 1
    devices.synchronize(device)
    elapsed = time.perf_counter() - start
    losses, _, _ = step.read()  # the last step's figures, once the clock has stopped

    timed = batches[args.warmup:]
    real = sum(int(b.mel_lengths.sum()) for b in timed)
    padded = sum(b.mel.shape[0] * b.mel.shape[2] for b in timed)
    peak_mb, peak_kind = devices.peak_memory_mb(device), "cuda_allocated"
    if peak_mb is None:
        peak_mb, peak_kind = _rss_mb(), "process_max_rss"
    frames_per_s = real / elapsed
    return {
        "loop": args.loop, "preset": args.preset, "r": hp.n_frames_per_step,
        "bucketing": args.bucketing, "precision": hp.precision, "compile": hp.compile,
        "cuda_graphs": hp.cuda_graphs,
        "batch_size": hp.batch_size, "device": str(device),
        "device_name": devices.device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data": data,
        "warmup": args.warmup, "steps": args.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "real_frames_per_s": round(frames_per_s, 1),
        "audio_s_per_s": round(frames_per_s * hp.hop_length / hp.sampling_rate, 3),
        "padding_share": round(1 - real / padded, 4),
        "s_per_step": round(elapsed / args.steps, 4),
        "peak_mb": round(peak_mb, 1), "peak_kind": peak_kind,
        "rss_before_steps_mb": round(rss_before, 1),
        "mean_mel_frames": round(real / (args.steps * hp.batch_size), 1),
        "mean_max_text": round(float(np.mean([b.text.shape[1] for b in timed])), 1),
        "last_loss": round(losses["total"], 4),
    }


# ---------------------------------------------------------------------------------- output
def _table(rows: List[Dict[str, Any]], baseline: Optional[float]) -> str:
    head = (f"{'configuration':<52} {'real frames/s':>13} {'padding':>8} {'s/step':>8} "
            f"{'peak MB':>8} {'speed-up':>8}")
    lines = [head]
    for row in rows:
        speed = f"{row['real_frames_per_s'] / baseline:.2f}x" if baseline else "-"
        name = (f"{row['name']}: " if "name" in row else "") + (
            f"{row['loop']} loop, {'buckets' if row['bucketing'] == 'on' else 'random'}, "
            f"r={row['r']}" + (", compiled" if row["compile"] else "")
            + (", graphs" if row.get("cuda_graphs") else "")
            + (f", {row['precision']}" if row["precision"] != "fp32" else ""))
        lines.append(f"{name:<52} {row['real_frames_per_s']:>13.1f} "
                     f"{100 * row['padding_share']:>7.1f}% {row['s_per_step']:>8.3f} "
                     f"{row['peak_mb']:>8.0f} {speed:>8}")
    return "\n".join(lines)


def _describe(row: Dict[str, Any]) -> str:
    return (f"preset {row['preset']} ({row['parameters']:,} parameters), batch "
            f"{row['batch_size']}, {row['precision']}, device {row['device']} "
            f"({row['device_name']}), {row['threads']} thread(s), torch {row['torch']}; "
            f"{row['data']}; {row['warmup']} warm-up + {row['steps']} timed steps; peak MB = "
            f"{row['peak_kind']}")


def _child_argv(args: argparse.Namespace, loop: str, bucketing: str, r: int) -> List[str]:
    """Command line of one comparison row: the shared flags, then the row's own."""
    argv = [sys.executable, os.path.abspath(__file__), "--loop", loop, "--bucketing", bucketing,
            "--r", str(r), "--preset", args.preset, "--batch_size", str(args.batch_size),
            "--device", args.device, "--precision", args.precision, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--lengths", args.lengths, "--pool", str(args.pool),
            "--seed", str(args.seed),
            "--compile", args.compile if loop == "optimised" else "off",
            "--cuda_graphs", args.cuda_graphs if loop == "optimised" else "off"]
    for flag, value in (("--hparams", args.hparams), ("--threads", args.threads),
                        ("--filelist", args.filelist), ("--data_root", args.data_root)):
        if value:
            argv += [flag, str(value)]
    return argv


def compare(args: argparse.Namespace) -> int:
    """Runs the COMPARE_ROWS one after the other, each in its own process."""
    rows: List[Dict[str, Any]] = []
    for name, loop, bucketing, r in COMPARE_ROWS:
        r = r if r is not None else (args.r or COMPARE_DEFAULT_R)
        name = f"+r={r}" if name == "+r" else name
        print(f"running {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(_child_argv(args, loop, bucketing, r), capture_output=True,
                              text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            print(f"train_throughput.py: row {name} failed (exit {done.returncode}): {tail}",
                  file=sys.stderr)
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]
        rows.append({"name": name, **row})

    print(f"training throughput; {_describe(rows[0])}")
    print(_table(rows, rows[0]["real_frames_per_s"]))
    hp = build_hparams(args)
    shares = sampler_padding("ljspeech", 64, 13100, hp, args.seed)
    print(f"padding share, ljspeech lengths, batch 64, 13,100 items, one epoch "
          f"(bucket_size_multiplier {hp.bucket_size_multiplier}): bucketed "
          f"{100 * shares['bucketed']:.1f}%, random {100 * shares['random']:.1f}%")
    baseline = rows[0]["real_frames_per_s"]
    for row in rows:
        row["speed_up"] = round(row["real_frames_per_s"] / baseline, 3)
    print(json.dumps({"bench": "train_throughput", "mode": "compare", "results": rows,
                      "ljspeech_batch64_padding": {k: round(v, 4) for k, v in shares.items()}}))
    return 0


def out_of_memory_report(args: argparse.Namespace, err: BaseException) -> Dict[str, Any]:
    """The configuration that did not fit, the error's first line and the memory figures."""
    report: Dict[str, Any] = {
        "status": "out_of_memory", "loop": args.loop, "preset": args.preset,
        "batch_size": args.batch_size, "precision": args.precision, "r": args.r,
        "cuda_graphs": args.cuda_graphs == "on", "compile": args.compile == "on",
        "device": args.device,
        "error": one_line(err)}
    device = torch.device(args.device) if args.device else torch.device("cpu")
    peak, total = devices.peak_memory_mb(device), devices.total_memory_mb(device)
    if peak is not None:
        report["peak_mb"], report["device_total_mb"] = round(peak, 1), round(total, 1)
    else:
        report["peak_mb"] = round(_rss_mb(), 1)  # the process's peak resident set
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.loop == "compare":
        return compare(args)
    try:
        row = measure(args)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if not devices.is_out_of_memory(err):
            raise
        report = out_of_memory_report(args, err)
        total = (f" of {report['device_total_mb']:,.0f} MB" if "device_total_mb" in report
                 else "")
        print(f"train_throughput.py: out of memory at batch {args.batch_size}, "
              f"{args.precision} on {args.device} (peak {report['peak_mb']:,.0f} MB{total}): "
              f"{report['error']}", file=sys.stderr)
        print(json.dumps({"bench": "train_throughput", "mode": "single", "results": [],
                          "out_of_memory": report}))
        return EXIT_OUT_OF_MEMORY
    print(f"training throughput; {_describe(row)}")
    print(_table([row], None))
    print(json.dumps({"bench": "train_throughput", "mode": "single", "results": [row]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
