"""data_utils.py: filelists, dataset and mel cache, collate, samplers, loaders."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import audio
import data_utils
from data_utils import (Batch, DataError, LengthBucketSampler, TextMelCollate, TextMelDataset,
                        curriculum_max_text_length, padding_share, prepare_dataloaders,
                        read_filelist)
from hparams import create_hparams
from text import text_to_sequence

# ---------------------------------------------------------------------------- filelists


def test_read_filelist_skips_blanks_and_comments(tmp_path, make_corpus):
    corpus = make_corpus(tmp_path, 3)
    lines = corpus.filelist.read_text(encoding="utf-8").splitlines()
    text = ("\ufeff# a comment\n" + lines[0] + "\n\n   \n" + lines[1] + "|anna\r\n  # x|y\n"
            + lines[2])
    corpus.filelist.write_text(text, encoding="utf-8")
    entries = read_filelist(corpus.filelist)
    assert [e.line for e in entries] == [2, 5, 7]
    assert [e.audio_path for e in entries] == [str(p) for p in corpus.wavs]
    assert [e.text for e in entries] == corpus.texts
    assert [e.speaker for e in entries] == [None, "anna", None]
    assert all(e.filelist == str(corpus.filelist) for e in entries)


def test_relative_paths_data_root_then_filelist_folder_then_cwd(tmp_path, make_corpus, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", 1)
    wav = corpus.wavs[0]
    # data_root wins
    lists = tmp_path / "lists"
    lists.mkdir()
    by_root = lists / "root.txt"
    by_root.write_text(f"{wav.name}|Hello.\n", encoding="utf-8")
    assert read_filelist(by_root, data_root=str(wav.parent))[0].audio_path == str(wav)
    # no data_root: the filelist's folder
    assert read_filelist(corpus.filelist)[0].audio_path == str(wav)
    # not beside the filelist: the cwd
    by_cwd = lists / "cwd.txt"
    by_cwd.write_text("wavs/train_000.wav|Hello.\n", encoding="utf-8")
    monkeypatch.chdir(corpus.root)
    assert read_filelist(by_cwd)[0].audio_path == str(wav)


@pytest.mark.parametrize("line,message", [
    ("wavs/train_000.wav", "expected 'audio_path|text' or 'audio_path|text|speaker', found 1"),
    ("wavs/train_000.wav|a|b|c", "found 4 field(s)"),
    ("wavs/train_000.wav|   ", "empty text for wavs/train_000.wav"),
    ("|Some text.", "empty audio path"),
    ("wavs/train_000.wav|Some text.| ", "empty speaker"),
    ("wavs/nowhere.wav|Some text.", "audio file wavs/nowhere.wav not found"),
    ("DUMMY/LJ001-0001.wav|Some text.", "NVIDIA filelists say DUMMY/"),
])
def test_filelist_errors_name_filelist_and_line(tmp_path, make_corpus, line, message):
    corpus = make_corpus(tmp_path, 2)
    good = corpus.filelist.read_text(encoding="utf-8").splitlines()
    corpus.filelist.write_text("\n".join([good[0], "", line, good[1]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_filelist(corpus.filelist)
    text = str(info.value)
    assert text.startswith(f"{corpus.filelist}:3: ")
    assert message in text and "\n" not in text


def test_missing_wav_names_the_paths_tried(tmp_path, make_corpus):
    corpus = make_corpus(tmp_path, 1)
    os.remove(corpus.wavs[0])
    with pytest.raises(DataError) as info:
        read_filelist(corpus.filelist)
    assert str(info.value).startswith(f"{corpus.filelist}:1: ")
    assert str(corpus.wavs[0]) in str(info.value)
    entries = read_filelist(corpus.filelist, check_exists=False)
    assert entries[0].audio_path == str(corpus.wavs[0])


def test_filelist_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a.wav|ok\nb.wav|caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8"):
        read_filelist(path, check_exists=False)


def test_missing_and_empty_filelist(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such filelist"):
        read_filelist(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt: the filelist holds no utterances"):
        read_filelist(empty)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(DataError, match="a_folder: cannot read filelist"):
        read_filelist(folder)


# ---------------------------------------------------------------------------- dataset


def test_dataset_items_and_lengths(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 3)
    data = TextMelDataset(read_filelist(corpus.filelist), tiny_hp)
    assert len(data) == 3
    for i in range(3):
        ids, mel = data[i]
        assert ids.dtype == torch.long and mel.dtype == torch.float32
        assert ids.tolist() == text_to_sequence(corpus.texts[i], tiny_hp.text_cleaners)
        assert data.text_lengths[i] == len(ids)
        samples = sf.info(corpus.wavs[i]).frames
        assert mel.shape == (tiny_hp.n_mel_channels, 1 + samples // 256)
        assert data.mel_lengths_estimate[i] == mel.shape[1]
        assert torch.equal(mel, audio.mel_from_file(corpus.wavs[i], tiny_hp))


def test_dataset_speakers(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 3, speakers=["bob", "anna", "bob"])
    data = TextMelDataset(read_filelist(corpus.filelist), tiny_hp, return_speakers=True)
    assert data.speaker_names == ["anna", "bob"]
    assert [data[i][2] for i in range(3)] == [1, 0, 1]
    plain = make_corpus(tmp_path / "plain", 1)
    with pytest.raises(DataError, match=r"plain.txt:1: no speaker|train.txt:1: no speaker"):
        TextMelDataset(read_filelist(plain.filelist), tiny_hp, return_speakers=True)


def test_unknown_character_names_filelist_and_line(tmp_path, make_corpus):
    corpus = make_corpus(tmp_path, 2, texts=["Fine.", "Caf\u00e9 \u00fcber"])
    hp = create_hparams("preset=tiny,text_cleaners=[basic_cleaners]")
    entries = read_filelist(corpus.filelist)
    with pytest.raises(DataError) as info:
        TextMelDataset(entries, hp)
    assert str(info.value).startswith(f"{corpus.filelist}:2: ")
    assert "drop_unknown_chars" in str(info.value)
    dropped = TextMelDataset(entries, hp.replace(drop_unknown_chars=True))
    assert dropped.text_lengths[1] == len("caf ber")


def test_text_empty_after_cleaning(tmp_path, make_corpus, tiny_hp, monkeypatch):
    corpus = make_corpus(tmp_path, 1)
    monkeypatch.setattr(data_utils, "text_to_sequence", lambda *args: [])
    with pytest.raises(DataError, match=r"train.txt:1: the text .* is empty after cleaning"):
        TextMelDataset(read_filelist(corpus.filelist), tiny_hp)


def test_arpabet_error_names_filelist_and_line(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 2, texts=["Fine.", "{HH AH0 L XX9}"])
    with pytest.raises(DataError) as info:
        TextMelDataset(read_filelist(corpus.filelist), tiny_hp)
    assert str(info.value).startswith(f"{corpus.filelist}:2: ")


def test_wrong_sample_rate_is_a_data_error(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 2, sr=16000)
    with pytest.raises(DataError) as info:
        TextMelDataset(read_filelist(corpus.filelist), tiny_hp)
    message = str(info.value)
    assert message.startswith(f"{corpus.filelist}:1: ")
    assert str(corpus.wavs[0]) in message and "16000" in message and "22050" in message


def test_too_short_wav_is_a_data_error(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 2)
    sf.write(corpus.wavs[1], np.zeros(400, np.int16), 22050, subtype="PCM_16")
    with pytest.raises(DataError, match=r"train.txt:2: .*400 samples is too short"):
        TextMelDataset(read_filelist(corpus.filelist), tiny_hp)


def test_file_replaced_by_wrong_rate_after_start(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 1)
    data = TextMelDataset(read_filelist(corpus.filelist), tiny_hp)
    sf.write(corpus.wavs[0], np.zeros(4000, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"train.txt:1: .*16000 Hz but 22050 Hz"):
        data[0]


def _cache_files(folder):
    return sorted(os.listdir(folder))


def test_mel_cache_reused_and_invalidated(tmp_path, make_corpus, tiny_hp, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", 2)
    entries = read_filelist(corpus.filelist)
    cache = tmp_path / "cache"
    data = TextMelDataset(entries, tiny_hp, cache_dir=str(cache))
    first = data[0][1]
    files = _cache_files(cache)
    assert len(files) == 1 and files[0].startswith("train_000-") and files[0].endswith(".npy")
    assert torch.equal(torch.from_numpy(np.load(cache / files[0])), first)

    # Unchanged settings: the cached mel is used (computing it again would fail here).
    def no_compute(*args, **kwargs):
        raise AssertionError("mel recomputed although cached")
    monkeypatch.setattr(data_utils, "mel_from_file", no_compute)
    again = TextMelDataset(entries, tiny_hp, cache_dir=str(cache))
    assert torch.equal(again[0][1], first)
    monkeypatch.undo()

    # A changed audio setting gives a new key and a new mel, never the stale one.
    changed = TextMelDataset(entries, tiny_hp.replace(mel_fmax=4000.0), cache_dir=str(cache))
    other = changed[0][1]
    assert not torch.equal(other, first)
    assert torch.equal(other, audio.mel_from_file(corpus.wavs[0], tiny_hp.replace(mel_fmax=4000.0)))
    assert len(_cache_files(cache)) == 2
    # A text setting does not touch the mel key.
    other_text = TextMelDataset(entries, tiny_hp.replace(text_cleaners=["basic_cleaners"]),
                                cache_dir=str(cache))
    assert data.cache_path(0) == other_text.cache_path(0)


@pytest.mark.parametrize("name,value", [
    ("sampling_rate", 24000), ("filter_length", 2048), ("hop_length", 128), ("win_length", 800),
    ("n_mel_channels", 40), ("mel_fmin", 50.0), ("mel_fmax", 7000.0), ("max_wav_value", 32767.0),
    ("trim_silence", True), ("trim_top_db", 30.0),
])
def test_every_audio_hparam_changes_the_cache_key(tmp_path, make_corpus, tiny_hp, name, value):
    corpus = make_corpus(tmp_path, 1)
    path = str(corpus.wavs[0])
    assert data_utils.mel_cache_key(path, tiny_hp) != data_utils.mel_cache_key(
        path, tiny_hp.replace(**{name: value}))


def test_cache_key_follows_the_file(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path, 1)
    path = str(corpus.wavs[0])
    before = data_utils.mel_cache_key(path, tiny_hp)
    assert data_utils.mel_cache_key(path, tiny_hp) == before
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert data_utils.mel_cache_key(path, tiny_hp) != before


def test_damaged_cache_file_is_recomputed(tmp_path, make_corpus, tiny_hp):
    corpus = make_corpus(tmp_path / "corpus", 1)
    data = TextMelDataset(read_filelist(corpus.filelist), tiny_hp, cache_dir=str(tmp_path / "c"))
    good = data[0][1]
    with open(data.cache_path(0), "wb") as f:
        f.write(b"garbage")
    assert torch.equal(data[0][1], good)
    assert torch.equal(torch.from_numpy(np.load(data.cache_path(0))), good)
    assert not [f for f in os.listdir(tmp_path / "c") if f.startswith(".tmp")]


# ---------------------------------------------------------------------------- collate

def _items():
    # item 0: 2 symbols, 2 frames; item 1: 3 symbols, 4 frames; n_mel = 2
    return [
        (torch.tensor([5, 6]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
        (torch.tensor([7, 8, 9]), torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])),
    ]


@pytest.mark.parametrize("r,gate,mel_short", [
    (1, [[0, 0, 0, 1], [0, 1, 1, 1]], [[1, 2, 0, 0], [3, 4, 0, 0]]),
    (3, [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]], [[1, 2, 0, 0, 0, 0], [3, 4, 0, 0, 0, 0]]),
])
def test_collate_pads_sorts_and_sets_gate(r, gate, mel_short):
    batch = TextMelCollate(r)(_items())
    assert isinstance(batch, Batch)
    assert batch.text.tolist() == [[7, 8, 9], [5, 6, 0]]
    assert batch.text_lengths.tolist() == [3, 2]
    assert batch.mel_lengths.tolist() == [4, 2]
    assert batch.gate.tolist() == gate
    assert batch.mel[1].tolist() == mel_short
    assert batch.mel[0, :, :4].tolist() == [[1, 1, 1, 1], [2, 2, 2, 2]]
    assert batch.mel[0, :, 4:].abs().sum() == 0
    assert batch.speakers is None
    assert (batch.text.dtype, batch.mel.dtype, batch.gate.dtype) == (
        torch.long, torch.float32, torch.float32)
    assert batch.text_lengths.dtype == torch.long and batch.mel_lengths.dtype == torch.long


def test_collate_with_speakers_and_to():
    items = [(ids, mel, speaker) for (ids, mel), speaker in zip(_items(), [4, 2])]
    batch = TextMelCollate(2)(items).to("cpu", non_blocking=True)
    assert batch.speakers.tolist() == [2, 4]  # follows the text-length order
    assert batch.mel.shape == (2, 2, 4)
    assert TextMelCollate(1)(_items()).to(torch.device("cpu")).speakers is None


def test_collate_rejects_mixed_mel_channels():
    items = _items() + [(torch.tensor([1]), torch.zeros(3, 2))]
    with pytest.raises(ValueError, match=r"\(n_mel=2, T\)"):
        TextMelCollate(1)(items)
    with pytest.raises(ValueError, match="n_frames_per_step"):
        TextMelCollate(0)


# ---------------------------------------------------------------------------- samplers

def _lengths(n, seed=0):
    return np.random.default_rng(seed).integers(50, 900, n).tolist()


def ljspeech_like_lengths(n=13100, seed=0):
    """Mel frames of clips of 1.1-10.1 s, skewed long (mean about 6.7 s) as LJSpeech's are."""
    seconds = 1.1 + 9.0 * np.random.default_rng(seed).beta(2.5, 1.5, n)
    return (1 + seconds * 22050 // 256).astype(int).tolist()


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("n,batch_size", [(103, 8), (64, 8), (5, 8)])
def test_sampler_covers_every_item_once_per_epoch(n, batch_size, bucket):
    sampler = LengthBucketSampler(_lengths(n), batch_size, seed=3, bucket=bucket,
                                  bucket_size_multiplier=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-n // batch_size)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(len(b) <= batch_size for b in batches)


def test_sampler_differs_between_epochs_and_repeats_per_seed():
    sampler = LengthBucketSampler(_lengths(200), 8, seed=1)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(LengthBucketSampler(_lengths(200), 8, seed=2)) != epoch0


def test_unshuffled_sampler_is_in_order_without_bucketing():
    sampler = LengthBucketSampler(_lengths(10), 4, shuffle=False, bucket=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("n,replicas", [(96, 2), (100, 3), (10, 4)])
def test_sampler_ranks_disjoint_and_equal(n, replicas):
    lengths = _lengths(n)
    shares = []
    for rank in range(replicas):
        sampler = LengthBucketSampler(lengths, 8, seed=5, num_replicas=replicas, rank=rank)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of steps
    seen = [i for share in shares for b in share for i in b]
    assert set(seen) == set(range(n))  # every item on some rank
    n_batches = -(-n // 8)
    if n_batches % replicas == 0:  # no padding needed: the shares are disjoint
        assert len(seen) == n
    # without padding the shares are always disjoint
    firsts = [share[:n_batches // replicas] for share in shares]
    flat = [i for share in firsts for b in share for i in b]
    assert len(flat) == len(set(flat))


def test_sampler_drop_last_with_ranks():
    sampler = LengthBucketSampler(_lengths(100), 8, drop_last=True, num_replicas=3, rank=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (100 // 8) // 3
    assert all(len(b) == 8 for b in batches)


def test_bucketing_keeps_padding_low():
    # Batches of 64 on 13,100 LJSpeech-like clips. Padding shrinks with the pool size: about
    # 6.7% with pools of 8 batches, 3.6% with 16, 2% with 32; random batches pad about 32%.
    lengths = ljspeech_like_lengths()
    shares = {m: padding_share(list(LengthBucketSampler(lengths, 64, bucket_size_multiplier=m)),
                               lengths) for m in (8, 32)}
    plain_share = padding_share(list(LengthBucketSampler(lengths, 64, bucket=False)), lengths)
    assert shares[32] < 0.05
    assert shares[8] < 0.08
    assert plain_share > 0.25


def test_padding_share_literal():
    assert padding_share([[0, 1], [2]], [2, 4, 3]) == pytest.approx(1 - 9 / 11)
    assert padding_share([], [1, 2]) == 0.0


def test_curriculum_cap_respected():
    text_lengths = list(range(1, 41))  # item i has text length i + 1
    sampler = LengthBucketSampler(_lengths(40), 4, seed=0, text_lengths=text_lengths)
    assert sampler.set_max_text_length(10) == 10
    offered = sorted(i for b in sampler for i in b)
    assert offered == list(range(10))
    assert len(sampler) == 3
    # Fewer than a batch fits: the shortest batch_size items are offered.
    assert sampler.set_max_text_length(2) == 4
    assert sorted(i for b in sampler for i in b) == [0, 1, 2, 3]
    assert sampler.set_max_text_length(None) == 40
    assert sorted(i for b in sampler for i in b) == list(range(40))
    sampler.set_allowed([5, 3, 3, 30])
    assert sorted(i for b in sampler for i in b) == [3, 5, 30]
    sampler.set_allowed(None)
    assert len(sampler) == 10
    with pytest.raises(ValueError, match="needs text_lengths"):
        LengthBucketSampler(_lengths(4), 2).set_max_text_length(3)


def test_curriculum_max_text_length_schedule():
    text_lengths = list(range(1, 101))
    hp = create_hparams("curriculum=true,curriculum_start_quantile=0.3,curriculum_steps=1000")
    assert curriculum_max_text_length(0, hp, text_lengths) == 31
    assert curriculum_max_text_length(500, hp, text_lengths) == 66
    assert curriculum_max_text_length(1000, hp, text_lengths) is None
    assert curriculum_max_text_length(0, hp.replace(curriculum=False), text_lengths) is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(batch_size=2, num_replicas=2, rank=2), "rank 2 outside 0..1"),
])
def test_sampler_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LengthBucketSampler([1, 2, 3], **kwargs)


# ---------------------------------------------------------------------------- loaders

def test_prepare_dataloaders(tmp_path, make_corpus):
    train = make_corpus(tmp_path, 6, name="train")
    val = make_corpus(tmp_path, 3, name="val")
    hp = create_hparams(f"preset=tiny,training_files={train.filelist},"
                        f"validation_files={val.filelist},mel_cache=true,batch_size=4,"
                        f"n_frames_per_step=2")
    run_dir = tmp_path / "run"
    train_loader, val_loader, train_set, val_set = prepare_dataloaders(hp, str(run_dir))
    assert (len(train_set), len(val_set)) == (6, 3)
    assert isinstance(train_loader.batch_sampler, LengthBucketSampler)
    batches = list(train_loader)
    assert len(batches) == len(train_loader) == 2
    assert sum(b.text.shape[0] for b in batches) == 6
    assert all(b.mel.shape[2] % 2 == 0 and b.mel.shape[1] == 20 for b in batches)
    assert len(os.listdir(run_dir / "mel_cache")) == 6
    (val_batch,) = list(val_loader)
    expected = sorted(range(3), key=lambda i: -val_set.text_lengths[i])
    assert val_batch.text_lengths.tolist() == [val_set.text_lengths[i] for i in expected]
    # DDP: rank 1 of 2 gets its own share; no run folder means no cache.
    loader, _, _, _ = prepare_dataloaders(hp.replace(mel_cache=True), None, rank=1, world_size=2)
    assert loader.batch_sampler.rank == 1 and len(loader) == 1
    assert not (tmp_path / "mel_cache").exists()
