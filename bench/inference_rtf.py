"""Real-time factor of inference: mel generation and Griffin-Lim, at batch 1 and batch 8.

    python bench/inference_rtf.py              # demo preset, random weights, CPU
    python bench/inference_rtf.py --checkpoint output/trial_0/checkpoint_LATEST --device cuda

Real-time factor = seconds of audio produced / wall-clock seconds (above 1 is faster than real
time). The decode length is forced so that the timing is deterministic and does not depend on
whether the (possibly random) model's gate fires: gate_threshold is set to 2, which a sigmoid
never exceeds, so every sentence decodes exactly `--steps` decoder steps (steps * r mel frames)
and is reported as having hit max_decoder_steps. The figures therefore measure the decoder's
speed per step, not the length a trained model would choose.

Mel generation is timed around `inference.synthesize` (text cleaning, encoder, decoder loop,
postnet, copies to the CPU, alignment scores), after one warm-up call. Griffin-Lim runs item by
item whatever the batch size (its cost per second of audio does not depend on it), so to keep
the bench under two minutes on two CPU cores it is timed on the first `--griffin_lim_items` mels
of each batch size's run. Prints a table and then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

# Run from anywhere: the project's modules live in the folder above this one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from checkpoint import model_from_checkpoint  # noqa: E402
from hparams import create_hparams  # noqa: E402
from inference import synthesize, vocode_griffin_lim  # noqa: E402
from model import Tacotron2  # noqa: E402

SENTENCES = (
    "The morning fog rolled slowly across the quiet harbor.",
    "Please close the window before the rain comes in.",
    "Have you ever tried baking bread without a recipe?",
    "Our neighbor's cat sleeps on the warm car roof every afternoon.",
    "The library opens at nine, but the bakery opens earlier.",
    "A small boat drifted past the lighthouse at dawn.",
    "She painted the fence blue, then changed her mind.",
    "Thunder echoed through the valley for several minutes.",
)
RUSSIAN_SENTENCES = (
    "Утренний туман медленно плыл над тихой гаванью.",
    "Пожалуйста, закрой окно, пока не начался дождь.",
    "Ты когда-нибудь пёк хлеб без рецепта?",
    "Кошка соседа спит на тёплой крыше машины.",
    "Библиотека открывается в девять, а пекарня раньше.",
    "Маленькая лодка проплыла мимо маяка на рассвете.",
    "Она покрасила забор в синий цвет, а потом передумала.",
    "Гром долго гремел над долиной.",
)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint; default: the preset's model with random weights")
    parser.add_argument("--preset", default="demo", help="model size when no checkpoint")
    parser.add_argument("--hparams", default="", help="further overrides, name=value,...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=100,
                        help="decoder steps per sentence (forced; steps * r mel frames)")
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--griffin_lim_iters", type=int, default=60)
    parser.add_argument("--griffin_lim_items", type=int, default=2,
                        help="mels vocoded per batch size for the Griffin-Lim figure")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this run (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    forced = f"gate_threshold=2.0,max_decoder_steps={args.steps}"
    overrides = ",".join(s for s in (args.hparams, forced) if s)
    device = torch.device(args.device)
    if args.checkpoint:
        model, hp, _ = model_from_checkpoint(args.checkpoint, device, overrides)
        source = args.checkpoint
    else:
        hp = create_hparams(f"preset={args.preset},{overrides}")
        torch.manual_seed(0)
        model = Tacotron2(hp).to(device).eval()
        source = f"preset={args.preset}, random weights"
    pool = RUSSIAN_SENTENCES if hp.symbol_set == "russian" else SENTENCES
    texts = [pool[i % len(pool)] for i in range(args.sentences)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    seconds_per_frame = hp.hop_length / hp.sampling_rate

    synthesize(model, hp, texts[:1], device, batch_size=1, seed=0)  # warm-up (allocations)
    vocode_griffin_lim(synthesize(model, hp, texts[:1], device, seed=0)[0]["mel"], hp, 1)

    rows: List[Dict[str, Any]] = []
    for batch_size in batch_sizes:
        start = time.perf_counter()
        results = synthesize(model, hp, texts, device, batch_size=batch_size, seed=0)
        mel_wall = time.perf_counter() - start
        audio_seconds = sum(r["mel"].shape[1] for r in results) * seconds_per_frame
        vocoded = results[:max(1, args.griffin_lim_items)]
        gl_audio = sum(r["mel"].shape[1] for r in vocoded) * seconds_per_frame
        start = time.perf_counter()
        for item in vocoded:
            vocode_griffin_lim(item["mel"], hp, args.griffin_lim_iters)
        gl_wall = time.perf_counter() - start
        rows.append({"batch_size": batch_size, "items": len(results),
                     "audio_seconds": round(audio_seconds, 3),
                     "mel_wall_seconds": round(mel_wall, 3),
                     "mel_rtf": round(audio_seconds / mel_wall, 2),
                     "griffin_lim_wall_seconds": round(gl_wall, 3),
                     "griffin_lim_items": len(vocoded),
                     "griffin_lim_rtf": round(gl_audio / gl_wall, 2)})

    frames = args.steps * hp.n_frames_per_step
    print(f"inference real-time factor (audio s / wall s); {source}; device {device}, "
          f"{torch.get_num_threads()} threads; {args.sentences} sentences x {args.steps} steps "
          f"x r={hp.n_frames_per_step} = {frames} frames ({frames * seconds_per_frame:.2f} s) "
          f"each, forced (gate_threshold=2); Griffin-Lim {args.griffin_lim_iters} iterations")
    print(f"{'batch':>5} {'audio s':>8} {'mel s':>7} {'mel RTF':>8} {'GL items':>8} {'GL s':>7} "
          f"{'GL RTF':>7}")
    for row in rows:
        print(f"{row['batch_size']:>5} {row['audio_seconds']:>8.2f} "
              f"{row['mel_wall_seconds']:>7.2f} "
              f"{row['mel_rtf']:>8.2f} {row['griffin_lim_items']:>8} "
              f"{row['griffin_lim_wall_seconds']:>7.2f} "
              f"{row['griffin_lim_rtf']:>7.2f}")
    print(json.dumps({
        "bench": "inference_rtf", "source": source, "device": str(device),
        "threads": torch.get_num_threads(), "preset": hp.preset, "sentences": args.sentences,
        "decoder_steps": args.steps, "n_frames_per_step": hp.n_frames_per_step,
        "griffin_lim_iters": args.griffin_lim_iters, "results": rows,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
