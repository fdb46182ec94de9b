"""data_utils.py: filelists, dataset and mel cache, collate, samplers, loaders."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import audio
import data_utils
from data_utils import (Batch, DataError, FilelistProblem, LengthBucketSampler, SamplerStateError,
                        TextMelCollate, TextMelDataset, curriculum_max_text_length,
                        padding_share, prepare_dataloaders, read_filelist)
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


def test_missing_filelist_names_the_filelists_beside_it(tmp_path):
    lists = tmp_path / "filelists"
    lists.mkdir()
    for name in ("demo_en_train.txt", "demo_en_val.txt", "demo_ru_train.txt"):
        (lists / name).write_text("a.wav|A.\n", encoding="utf-8")
    (lists / ".hidden.txt").write_text("x", encoding="utf-8")
    (lists / "notes.md").write_text("x", encoding="utf-8")
    (lists / "sub").mkdir()
    typo = str(lists / "demo_en_trian.txt")
    with pytest.raises(DataError) as info:
        read_filelist(typo)
    assert str(info.value) == (f"{typo}: no such filelist; filelists in {lists}/: "
                               f"demo_en_train.txt, demo_en_val.txt, demo_ru_train.txt")
    assert info.value.problem == FilelistProblem("bad_filelist", typo, 0,
                                                 str(info.value)[len(typo) + 2:])
    with pytest.raises(DataError, match=r"no such filelist; the folder .*nowhere/ does not exist"):
        read_filelist(tmp_path / "nowhere" / "train.txt")


def test_missing_filelist_lists_at_most_eight(tmp_path):
    for i in range(11):
        (tmp_path / f"list_{i:02d}.txt").write_text("a.wav|A.\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_filelist(tmp_path / "nope.txt")
    assert str(info.value).endswith("list_06.txt, list_07.txt, ... (3 more)")


def test_collecting_mode_reports_every_fault_with_its_kind(tmp_path, make_corpus):
    corpus = make_corpus(tmp_path, 3)
    good = corpus.filelist.read_text(encoding="utf-8").splitlines()
    lines = [good[0], "no text here", "wavs/train_001.wav|  ", "|Text.", good[1] + "| ",
             "wavs/nowhere.wav|Text.", good[2]]
    corpus.filelist.write_bytes(("\n".join(lines) + "\n").encode("utf-8") + b"\xff|x\n")
    entries, problems = read_filelist(corpus.filelist, collect_errors=True)
    # the good lines come back exactly as the raising mode reads them
    assert [(e.line, e.audio_path, e.text) for e in entries] == [
        (1, str(corpus.wavs[0]), corpus.texts[0]), (7, str(corpus.wavs[2]), corpus.texts[2])]
    filelist = str(corpus.filelist)
    assert [(p.kind, p.file, p.line) for p in problems] == [
        ("bad_line", filelist, 2), ("empty_text", filelist, 3), ("bad_line", filelist, 4),
        ("bad_line", filelist, 5), ("missing_audio", filelist, 6), ("bad_line", filelist, 8)]
    assert problems[1].message == "empty text for wavs/train_001.wav"
    assert problems[3].message == "empty speaker name after the second '|'"
    assert problems[5].message.startswith("not UTF-8 (invalid start byte at byte 0)")
    assert str(problems[0]) == (f"{filelist}:2: expected 'audio_path|text' or "
                                f"'audio_path|text|speaker', found 1 field(s) separated by '|'")
    # the raising mode stops at the first of them, with the same words
    with pytest.raises(DataError) as info:
        read_filelist(corpus.filelist)
    assert str(info.value) == str(problems[0]) and info.value.problem == problems[0]
    # without the existence check the missing wav is an entry (check_data reports it itself)
    entries, problems = read_filelist(corpus.filelist, check_exists=False, collect_errors=True)
    assert 6 in [e.line for e in entries] and "missing_audio" not in [p.kind for p in problems]


def test_collecting_mode_whole_file_faults(tmp_path):
    missing = tmp_path / "nope.txt"
    assert read_filelist(missing, collect_errors=True) == ([], [FilelistProblem(
        "bad_filelist", str(missing), 0, f"no such filelist; {tmp_path}/ holds no files")])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert read_filelist(empty, collect_errors=True) == ([], [FilelistProblem(
        "bad_filelist", str(empty), 0, "the filelist holds no utterances")])
    # only bad lines: each is reported, and no "holds no utterances" on top
    bad = tmp_path / "bad.txt"
    bad.write_text("just one field\n", encoding="utf-8")
    entries, problems = read_filelist(bad, check_exists=False, collect_errors=True)
    assert entries == [] and [(p.kind, p.line) for p in problems] == [("bad_line", 1)]


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
    assert (batch.text.dtype, batch.mel.dtype, batch.gate.dtype) == (
        torch.long, torch.float32, torch.float32)
    assert batch.text_lengths.dtype == torch.long and batch.mel_lengths.dtype == torch.long


def test_collate_to():
    batch = TextMelCollate(2)(_items()).to("cpu", non_blocking=True)
    assert batch.mel.shape == (2, 2, 4)

def test_collate_rejects_mixed_mel_channels():
    items = _items() + [(torch.tensor([1]), torch.zeros(3, 2))]
    with pytest.raises(ValueError, match=r"\(n_mel=2, T\)"):
        TextMelCollate(1)(items)
    with pytest.raises(ValueError, match="n_frames_per_step"):
        TextMelCollate(0)


def test_collate_keeps_the_order_it_applied():
    lengths = [3, 5, 1, 5, 2]  # ties keep their input order (a stable sort)
    items = [(torch.arange(1, n + 1), torch.full((2, n + 1), float(i)))
             for i, n in enumerate(lengths)]
    batch = TextMelCollate(1)(items)
    assert batch.order.dtype == torch.long and batch.order.tolist() == [1, 3, 0, 4, 2]
    for row, index in enumerate(batch.order.tolist()):
        assert int(batch.text_lengths[row]) == lengths[index]
        assert torch.equal(batch.mel[row, :, :lengths[index] + 1], items[index][1])
    # rows back in input order, without comparing tensors
    restored = batch.text_lengths[batch.order.argsort()]
    assert restored.tolist() == lengths


def test_batch_to_keeps_order_on_the_cpu_and_five_field_batches_still_work():
    batch = TextMelCollate(1)(_items())
    moved = batch.to("meta")
    assert moved.text.device.type == "meta" and moved.mel.device.type == "meta"
    assert moved.order.device.type == "cpu" and moved.order.tolist() == [1, 0]
    by_hand = Batch(*batch[:5])  # five fields, as code written before `order` builds it
    assert by_hand.order is None and by_hand.to("cpu").order is None


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


def _resume_cases():
    text_lengths = np.random.default_rng(7).integers(5, 120, 203).tolist()
    lengths = _lengths(203, seed=7)
    return [
        dict(lengths=lengths, batch_size=8, seed=11, bucket_size_multiplier=4),
        dict(lengths=lengths, batch_size=8, seed=11, bucket=False),
        dict(lengths=lengths, batch_size=8, seed=11, drop_last=True),
        dict(lengths=lengths, batch_size=6, seed=3, num_replicas=3, rank=2),
        dict(lengths=lengths, batch_size=6, seed=3, num_replicas=2, rank=0, drop_last=True),
        dict(lengths=lengths, batch_size=8, seed=5, text_lengths=text_lengths, cap=40),
    ]


@pytest.mark.parametrize("case", range(6))
def test_resumed_sampler_continues_the_epoch_exactly(case):
    import json

    config = dict(_resume_cases()[case])
    cap = config.pop("cap", None)
    straight = LengthBucketSampler(**config)
    straight.set_epoch(3)
    if cap is not None:
        straight.set_max_text_length(cap)
    batches = list(straight)
    assert len(batches) == len(straight) == straight.batches_per_epoch() > 4
    for k in (0, 1, len(batches) // 2, len(batches) - 1, len(batches)):
        # through JSON, as a checkpoint's `extra` would carry it
        state = json.loads(json.dumps(straight.state_dict(position=k)))
        fresh = LengthBucketSampler(**config)  # no epoch, no cap: all comes from the state
        fresh.load_state_dict(state)
        assert (fresh.epoch, fresh.start_batch, fresh.max_text_length) == (3, k, cap)
        assert list(fresh) == batches[k:]
        assert len(fresh) == len(batches) - k
        assert list(fresh) == batches[k:]  # the position holds for every iteration of the epoch
        # the next epoch starts from its beginning, as the straight run's does
        fresh.set_epoch(4)
        straight_next = LengthBucketSampler(**config)
        straight_next.set_epoch(4)
        if cap is not None:
            straight_next.set_max_text_length(cap)
        assert list(fresh) == list(straight_next)


def test_set_epoch_start_batch_and_reset():
    sampler = LengthBucketSampler(_lengths(100), 8, seed=2)
    sampler.set_epoch(5)
    full = list(sampler)
    sampler.set_epoch(5, start_batch=4)
    assert list(sampler) == full[4:] and len(sampler) == len(full) - 4
    sampler.set_epoch(5)
    assert list(sampler) == full
    sampler.set_epoch(5, start_batch=len(full) + 1)
    with pytest.raises(ValueError, match=r"start_batch 14 is past the end of epoch 5, which has "
                                         r"13 batches"):
        list(sampler)
    with pytest.raises(ValueError, match="must be >= 0"):
        sampler.set_epoch(-1)


def test_epoch_order_ignores_the_global_rngs():
    import random

    orders = []
    for seed in (0, 99):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        sampler = LengthBucketSampler(_lengths(150), 8, seed=4)
        sampler.set_epoch(2)
        orders.append(list(sampler))
    assert orders[0] == orders[1]


def test_state_dict_is_plain_and_complete():
    import json

    sampler = LengthBucketSampler(_lengths(40), 4, seed=9, text_lengths=list(range(1, 41)))
    sampler.set_epoch(2, start_batch=1)
    sampler.set_max_text_length(10)
    state = sampler.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state["epoch"] == 2 and state["start_batch"] == 1 and state["max_text_length"] == 10
    assert state["allowed"] == list(range(10)) and state["n_items"] == 40
    assert state["batches_per_epoch"] == 3 and state["rank"] == 0
    assert (state["seed"], state["batch_size"], state["shuffle"], state["bucket"]) == (9, 4, True,
                                                                                       True)
    sampler.set_allowed([1, 3, 5])
    assert sampler.state_dict()["max_text_length"] is None
    assert sampler.state_dict()["allowed"] == [1, 3, 5]


def test_rank_loads_the_state_of_rank_0():
    lengths = _lengths(90)
    ranks = [LengthBucketSampler(lengths, 6, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    expected = [list(s)[2:] for s in ranks]
    state = ranks[0].state_dict(position=2)
    for rank in (0, 1):
        fresh = LengthBucketSampler(lengths, 6, seed=1, num_replicas=2, rank=rank)
        fresh.load_state_dict(state)
        assert fresh.rank == rank and list(fresh) == expected[rank]


@pytest.mark.parametrize("change,message", [
    (dict(batch_size=4), "batch_size 8 saved, 4 now"),
    (dict(seed=2), "seed 1 saved, 2 now"),
    (dict(num_replicas=2), "num_replicas 1 saved, 2 now"),
    (dict(bucket=False, drop_last=True), "drop_last False saved, True now, bucket True saved, "
                                         "False now"),
    (dict(lengths=_lengths(60, seed=1)), "the 60 item lengths differ from the saved ones (the "
                                         "filelist or its audio changed)"),
    (dict(lengths=_lengths(61)), "saved over 60 items, now 61 (the filelist changed)"),
])
def test_state_of_another_sampler_is_refused(change, message):
    original = LengthBucketSampler(_lengths(60), 8, seed=1)
    original.set_epoch(2)
    state = original.state_dict(position=3)
    other = LengthBucketSampler(**{**dict(lengths=_lengths(60), batch_size=8, seed=1), **change})
    other.set_epoch(7, start_batch=1)
    with pytest.raises(SamplerStateError) as info:
        other.load_state_dict(state)
    assert str(info.value) == (f"sampler state: {message}; the saved data order cannot be "
                               f"continued exactly (start the epoch afresh with set_epoch)")
    assert (other.epoch, other.start_batch, other.allowed) == (7, 1, None)  # left unchanged


def test_malformed_sampler_state_is_refused():
    sampler = LengthBucketSampler(_lengths(60), 8, seed=1)
    state = sampler.state_dict()
    with pytest.raises(SamplerStateError, match="start_batch 9 is past the end of epoch 0 "
                                                r"\(8 batches on this rank\)"):
        sampler.load_state_dict({**state, "start_batch": 9})
    assert sampler.start_batch == 0
    with pytest.raises(SamplerStateError, match=r"offered item indices outside 0..59"):
        sampler.load_state_dict({**state, "allowed": [0, 60]})
    with pytest.raises(SamplerStateError, match="not a version-1 sampler state"):
        sampler.load_state_dict({"epoch": 1})
    with pytest.raises(SamplerStateError, match="missing lengths_sha1"):
        sampler.load_state_dict({k: v for k, v in state.items() if k != "lengths_sha1"})


class _IndexDataset(torch.utils.data.Dataset):
    """Item i is i: the loader's output shows the order the sampler gave."""

    def __len__(self):
        return 203

    def __getitem__(self, index):
        return index


def _as_lists(batch):
    return [int(i) for i in batch]


def test_resumed_sampler_through_a_dataloader_with_workers():
    from torch.utils.data import DataLoader

    config = _resume_cases()[0]
    straight = LengthBucketSampler(**config)
    straight.set_epoch(6)
    expected = list(straight)
    k = len(expected) // 3
    fresh = LengthBucketSampler(**config)
    fresh.load_state_dict(straight.state_dict(position=k))
    loader = DataLoader(_IndexDataset(), batch_sampler=fresh, num_workers=2,
                        collate_fn=_as_lists, generator=data_utils.loader_generator(0))
    assert len(loader) == len(expected) - k
    assert list(loader) == expected[k:]


def _tiny_loaders(tmp_path, make_corpus, workers):
    train = make_corpus(tmp_path, 6, name="train")
    val = make_corpus(tmp_path, 3, name="val")
    hp = create_hparams(f"preset=tiny,training_files={train.filelist},"
                        f"validation_files={val.filelist},num_workers={workers}")
    return prepare_dataloaders(hp, str(tmp_path / "run" / "mel_cache"))


@pytest.mark.parametrize("workers", [0, 2])
def test_creating_loader_iterators_leaves_the_global_rng_alone(tmp_path, make_corpus, workers):
    from torch.utils.data import DataLoader

    train_loader, val_loader, _, _ = _tiny_loaders(tmp_path, make_corpus, workers)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    for loader in (train_loader, val_loader):
        for _ in range(2):
            assert len(list(iter(loader))) > 0
            assert torch.equal(torch.get_rng_state(), before)
    # what the dedicated generators prevent: a plain loader draws from the global RNG
    iter(DataLoader(list(range(4))))
    assert not torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------- loaders

def test_prepare_dataloaders(tmp_path, make_corpus):
    train = make_corpus(tmp_path, 6, name="train")
    val = make_corpus(tmp_path, 3, name="val")
    hp = create_hparams(f"preset=tiny,training_files={train.filelist},"
                        f"validation_files={val.filelist},mel_cache=true,batch_size=4,"
                        f"n_frames_per_step=2")
    run_dir = tmp_path / "run"
    train_loader, val_loader, train_set, val_set = prepare_dataloaders(hp, str(run_dir / "mel_cache"))
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
