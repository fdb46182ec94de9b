"""The real-voice pack of bench/device_check.sh: festvox-ru, prepared, its clips as Ogg Vorbis.

    sudo apt-get install festvox-ru          # once (docs/real_speech.md; or unpack the .deb and
    python bench/make_voice_pack.py          #   point --input at its voice folder)
    # -> data/festvox_ru_pack.tar, ~21 MiB; the device call carries it:
    #    carry [".whl", "data/festvox_ru_pack.tar"], command "bash bench/device_check.sh"

What it does: `prepare_dataset.prepare` exactly as docs/real_speech.md runs it (`--format festvox
--language ru --resample --trim_silence --hparams max_audio_seconds=10`: 418 clips of at most 10 s,
22,050 Hz mono, 49 minutes) into a temporary folder, then every clip re-encoded as Ogg Vorbis
through soundfile and one uncompressed tar (Vorbis is compressed already):

    festvox_ru/train.txt, festvox_ru/val.txt   `audio/<id>.ogg|text`, paths relative to the list
    festvox_ru/audio/<id>.ogg
    festvox_ru/README.txt                      what the clips are, and the voice's licence

Why Vorbis: a device call carries at most 64 MiB, the repository included (~23 MiB tracked, plus
~9 MiB of wheels in .whl/). The prepared clips are 124 MiB as 16-bit PCM and 58 MiB as FLAC; the
log-mels as float16 .npz would be 31 MiB and data_utils reads mels only from audio (its own cache
is keyed on the audio file). Vorbis at `--compression 0.3` is ~21 MiB and goes through training's
unchanged audio path (soundfile decodes it in the DataLoader workers). The cost is measured and
printed: the mean squared difference between the log-mels of the Vorbis clips and of the lossless
ones, beside the log-mels' own variance.

The pack goes to data/, which git ignores: the voice's audio is never committed. Its licence
(BSD-like, /usr/share/doc/festvox-ru/copyright) asks that modified copies say so; README.txt in the
pack does, and carries the licence text.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from typing import List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from audio import load_wav, mel_from_file  # noqa: E402
from hparams import create_hparams  # noqa: E402
from prepare_dataset import LANGUAGES, PrepareError, prepare  # noqa: E402

DEBIAN_VOICE = "/usr/share/festival/voices/russian/msu_ru_nsh_clunits"
DEBIAN_COPYRIGHT = "/usr/share/doc/festvox-ru/copyright"
DEFAULT_OUT = os.path.join("data", "festvox_ru_pack.tar")
PACK_FOLDER = "festvox_ru"  # the one folder inside the tar
CARRY_LIMIT_MIB = 64  # what one device call carries, repository and carried paths together
FIDELITY_EVERY = 10  # every this many clips are decoded twice for the log-mel difference


class PackError(ValueError):
    """Bad input; one line naming it."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=DEBIAN_VOICE,
                        help="the festvox voice folder (etc/txt.done.data, wav/)")
    parser.add_argument("--out", default=os.path.join(ROOT, DEFAULT_OUT), help="the tar to write")
    parser.add_argument("--copyright", default=DEBIAN_COPYRIGHT,
                        help="the voice's licence file, copied into README.txt")
    parser.add_argument("--compression", type=float, default=0.3,
                        help="Vorbis compression level, 0 (best quality, largest) to 1")
    parser.add_argument("--max_audio_seconds", type=float, default=10.0,
                        help="longer clips (after trimming) are left out")
    parser.add_argument("--val_size", type=float, default=None,
                        help="validation clips: a count, or a fraction below 1 "
                             "(default: prepare_dataset's, 5%%)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes of the preparation")
    args = parser.parse_args(argv)
    if not 0.0 <= args.compression <= 1.0:
        parser.error(f"--compression {args.compression}: must be within 0..1")
    return args


def encode_clips(data_dir: str, out_dir: str, compression: float) -> List[Tuple[str, str]]:
    """Re-encodes the clips of data_dir's train.txt and val.txt as Vorbis into out_dir/audio and
    writes the filelists, pointed at them, to out_dir.

    Returns:
        [(lossless clip, its Vorbis copy)], training clips first.
    """
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    pairs = []
    for name in ("train.txt", "val.txt"):
        lines = []
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            for line in f:
                path, text = line.rstrip("\n").split("|", 1)
                stem = os.path.splitext(os.path.basename(path))[0]
                source = os.path.join(data_dir, path)
                target = os.path.join(out_dir, "audio", f"{stem}.ogg")
                sr = sf.info(source).samplerate
                sf.write(target, load_wav(source), sr, format="OGG", subtype="VORBIS",
                         compression_level=compression)
                pairs.append((source, target))
                lines.append(f"audio/{stem}.ogg|{text}\n")
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.writelines(lines)
    return pairs


def log_mel_difference(pairs: Sequence[Tuple[str, str]], hp) -> Tuple[float, float, int]:
    """(mean squared log-mel difference Vorbis vs lossless, the lossless log-mels' variance,
    clips compared), over every FIDELITY_EVERY-th clip, at the recipe's audio settings."""
    squared, values, count = [], [], 0
    for source, target in pairs[::FIDELITY_EVERY]:
        lossless, coded = mel_from_file(source, hp).numpy(), mel_from_file(target, hp).numpy()
        if lossless.shape != coded.shape:
            raise PackError(f"{target}: {coded.shape[1]} mel frames, the lossless clip "
                            f"{source} has {lossless.shape[1]}")
        squared.append(((coded - lossless) ** 2).ravel())
        values.append(lossless.ravel())
        count += 1
    return float(np.concatenate(squared).mean()), float(np.concatenate(values).var()), count


def readme(args: argparse.Namespace, clips: int, minutes: float, mse: float, variance: float,
           compared: int) -> str:
    if os.path.isfile(args.copyright):
        with open(args.copyright, encoding="utf-8", errors="replace") as f:
            licence = f.read()
    else:
        licence = f"(no licence file at {args.copyright} when this pack was built)\n"
    return (
        f"{clips} clips ({minutes:.1f} minutes) of the festvox voice in {args.input}\n"
        f"(Debian's festvox-ru: msu_ru_nsh_clunits, Nickolay V. Shmyrev's recordings).\n\n"
        f"MODIFIED COPIES: resampled to 22,050 Hz, leading and trailing silence cut "
        f"(prepare_dataset.py --format festvox --language ru --resample --trim_silence), only "
        f"clips of at most {args.max_audio_seconds:g} s kept, and encoded as lossy Ogg Vorbis "
        f"(soundfile, compression level {args.compression:g}): log-mel mean squared difference "
        f"{mse:.4f} against the lossless clips over {compared} clips (the log-mels' variance "
        f"{variance:.2f}).\nBuilt by bench/make_voice_pack.py of taco-align for "
        f"bench/device_check.sh.\n\nThe voice's licence:\n\n{licence}")


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed owner and time, so two builds differ only where the audio does."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(pack_dir: str, out: str, readme_text: str) -> None:
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with tarfile.open(tmp, "w") as tar:
            add_file(tar, f"{PACK_FOLDER}/README.txt", readme_text.encode("utf-8"))
            for folder, _, files in sorted(os.walk(pack_dir)):
                for name in sorted(files):
                    path = os.path.join(folder, name)
                    relative = os.path.relpath(path, pack_dir).replace(os.sep, "/")
                    with open(path, "rb") as f:
                        add_file(tar, f"{PACK_FOLDER}/{relative}", f.read())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def travelling_bytes(pack: str) -> Tuple[int, Optional[int]]:
    """(bytes of the files a device call sends from the repository - tracked, and untracked but
    not ignored - with the pack, bytes of .whl/ or None without it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    files = {os.path.join(ROOT, p.decode()) for p in listed.split(b"\0") if p}
    repository = sum(os.path.getsize(p) for p in files if os.path.isfile(p))
    if os.path.abspath(pack) not in files:
        repository += os.path.getsize(pack)
    wheels = os.path.join(ROOT, ".whl")
    if not os.path.isdir(wheels):
        return repository, None
    return repository, sum(os.path.getsize(os.path.join(wheels, n)) for n in os.listdir(wheels))


def build(args: argparse.Namespace) -> int:
    if not os.path.isfile(os.path.join(args.input, "etc", "txt.done.data")):
        raise PackError(f"{args.input}: no festvox voice here (no etc/txt.done.data); install it "
                        f"(sudo apt-get install festvox-ru) or unpack the package and point "
                        f"--input at its msu_ru_nsh_clunits folder (docs/real_speech.md)")
    cleaners, symbol_set = LANGUAGES["ru"]
    hp = create_hparams().replace(text_cleaners=cleaners, symbol_set=symbol_set,
                                  max_audio_seconds=args.max_audio_seconds)
    with tempfile.TemporaryDirectory(prefix="voice_pack_") as work:
        data_dir, pack_dir = os.path.join(work, "prepared"), os.path.join(work, "pack")
        result = prepare("festvox", args.input, data_dir, hp, val_size=args.val_size,
                         resample=True, trim=True, jobs=max(1, args.jobs), progress=False)
        reasons = Counter(skip.reason for skip in result["skipped"])
        print(f"prepared: {result['lines']} lines read, {len(result['kept'])} kept, "
              f"{len(result['skipped'])} left out"
              + (f" ({', '.join(f'{k} {n}' for k, n in sorted(reasons.items()))})"
                 if reasons else ""))
        pairs = encode_clips(data_dir, pack_dir, args.compression)
        mse, variance, compared = log_mel_difference(pairs, hp)
        minutes = 60 * result["hours"]
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_tar(pack_dir, args.out,
                  readme(args, len(pairs), minutes, mse, variance, compared))
    size = os.path.getsize(args.out)
    print(f"pack: {args.out}, {size / 2 ** 20:.1f} MiB: {len(pairs)} clips ({minutes:.1f} min; "
          f"{result['n_train']} train, {result['n_val']} validation) as Ogg Vorbis, compression "
          f"{args.compression:g}")
    print(f"Vorbis against the lossless clips: log-mel mean squared difference {mse:.4f} over "
          f"{compared} clips (the log-mels' own variance: {variance:.2f})")
    repository, wheels = travelling_bytes(args.out)
    total = repository + (wheels or 0)
    print(f"a device call carries: repository and pack {repository / 2 ** 20:.1f} MiB + .whl "
          + (f"{wheels / 2 ** 20:.1f} MiB" if wheels is not None else
             "(none here; ../shared/device/wheels.sh fetches ~9 MiB)")
          + f" = {total / 2 ** 20:.1f} MiB of {CARRY_LIMIT_MIB} MiB")
    if total > CARRY_LIMIT_MIB * 2 ** 20:
        print(f"warning: over the {CARRY_LIMIT_MIB} MiB a device call carries; raise "
              f"--compression (now {args.compression:g})", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except (PackError, PrepareError) as err:
        print(f"make_voice_pack.py: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
