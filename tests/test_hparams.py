"""hparams: parsing, coercion, presets, errors and the dict round trip."""
import json

import pytest

from hparams import PRESETS, HParams, HParamsError, create_hparams, parse_overrides


def test_defaults_are_the_users_plan():
    hp = HParams()
    assert (hp.learning_rate, hp.lr_decay_factor, hp.lr_patience_steps) == (5e-4, 0.8, 5000)
    assert (hp.p_attention_dropout, hp.p_decoder_dropout, hp.p_encoder_dropout,
            hp.p_postnet_dropout) == (0.1, 0.1, 0.02, 0.05)
    assert (hp.guide_loss_weight, hp.guide_scale, hp.guide_decay, hp.guide_lowbound) == \
        (2.0, 10.0, 0.9999, 0.1)
    assert (hp.guide_decay_start, hp.guide_decay_steps, hp.iters_per_validation) == \
        (10000, 100000, 200)
    assert hp.success_steps == [1000, 3000, 5000, 10000]
    assert hp.success_thresholds == [0.10, 0.30, 0.50, 0.70]
    assert (hp.red_flag_start_step, hp.red_flag_action, hp.red_flag_patience) == \
        (2000, "remediate", 2000)
    # NVIDIA's names and values for audio and model sizes
    assert (hp.sampling_rate, hp.filter_length, hp.hop_length, hp.win_length) == \
        (22050, 1024, 256, 1024)
    assert (hp.n_mel_channels, hp.mel_fmin, hp.mel_fmax, hp.max_wav_value) == \
        (80, 0.0, 8000.0, 32768.0)
    assert (hp.encoder_embedding_dim, hp.decoder_rnn_dim, hp.attention_rnn_dim,
            hp.prenet_dim, hp.attention_dim) == (512, 1024, 1024, 256, 128)


@pytest.mark.parametrize("text, name, expected", [
    ("batch_size=32", "batch_size", 32),
    ("batch_size=1e2", "batch_size", 100),
    ("learning_rate=1e-3", "learning_rate", 1e-3),
    ("guide_loss_weight=5", "guide_loss_weight", 5.0),
    ("curriculum=true", "curriculum", True),
    ("curriculum=False", "curriculum", False),
    ("curriculum=1", "curriculum", True),
    ("text_cleaners=[russian_cleaners]", "text_cleaners", ["russian_cleaners"]),
    ("ignore_layers=[embedding.weight,decoder.gate_layer.linear_layer.weight]", "ignore_layers",
     ["embedding.weight", "decoder.gate_layer.linear_layer.weight"]),
    ("success_steps=[100,200]", "success_steps", [100, 200]),
    ("success_steps=100;200", "success_steps", [100, 200]),
    ("red_flag_action=warn", "red_flag_action", "warn"),
    ("mel_loss=l1", "mel_loss", "l1"),
])
def test_coercion(text, name, expected):
    value = getattr(create_hparams(text), name) if name not in ("success_steps",) else \
        create_hparams(text + ",success_thresholds=[0.1,0.2]").success_steps
    assert value == expected and type(value) is type(expected)


def test_list_and_scalar_pairs_mix():
    hp = create_hparams("success_steps=[10,20],success_thresholds=[0.2,0.4],batch_size=8")
    assert (hp.success_steps, hp.success_thresholds, hp.batch_size) == ([10, 20], [0.2, 0.4], 8)


@pytest.mark.parametrize("text, message", [
    ("no_such_name=1", "unknown hparam 'no_such_name'"),
    ("batch_size=big", "bad value for hparam batch_size: 'big'"),
    ("batch_size=2.5", "bad value for hparam batch_size"),
    ("curriculum=maybe", "bad value for hparam curriculum"),
    ("learning_rate=fast", "bad value for hparam learning_rate"),
    ("success_steps=[1,x]", "bad value for hparam success_steps"),
    ("batch_size", "expected name=value"),
    ("preset=huge", "unknown preset 'huge'"),
    ("precision=fp8", "hparam precision='fp8'"),
    ("red_flag_action=panic", "hparam red_flag_action='panic'"),
    ("mel_loss=l2", "hparam mel_loss='l2': choose mse or l1"),
    ("n_frames_per_step=0", "hparam n_frames_per_step=0: must be >= 1"),
    ("success_steps=[1,2]", "needs one threshold per entry"),
    ("p_attention_dropout=1.5", "must be between 0 and 1"),
    ("symbol_set=klingon", "choose english or russian"),
])
def test_errors_name_the_hparam(text, message):
    with pytest.raises(HParamsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        create_hparams(text)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_and_round_trip(preset):
    hp = create_hparams(f"preset={preset}")
    assert hp.preset == preset
    for name, value in PRESETS[preset].items():
        assert getattr(hp, name) == value
    data = hp.to_dict()
    assert HParams.from_dict(json.loads(json.dumps(data))) == hp
    assert HParams.from_dict(data).to_dict() == data


def test_names_after_the_preset_override_it():
    hp = create_hparams("preset=demo,batch_size=4")
    assert hp.batch_size == 4 and hp.n_frames_per_step == PRESETS["demo"]["n_frames_per_step"]
    assert create_hparams("batch_size=4,preset=demo").batch_size == 4  # order does not matter


# NVIDIA/tacotron2 hparams.py, value by value (docs/nvidia_compatibility.md); the encoder and
# postnet dropouts are hard-coded to 0.5 in their model.py.
NVIDIA_HPARAMS = {
    "seed": 1234, "iters_per_checkpoint": 1000, "ignore_layers": ["embedding.weight"],
    "text_cleaners": ["english_cleaners"], "max_wav_value": 32768.0, "sampling_rate": 22050,
    "filter_length": 1024, "hop_length": 256, "win_length": 1024, "n_mel_channels": 80,
    "mel_fmin": 0.0, "mel_fmax": 8000.0, "symbols_embedding_dim": 512, "encoder_kernel_size": 5,
    "encoder_n_convolutions": 3, "encoder_embedding_dim": 512, "n_frames_per_step": 1,
    "decoder_rnn_dim": 1024, "prenet_dim": 256, "max_decoder_steps": 1000, "gate_threshold": 0.5,
    "p_attention_dropout": 0.1, "p_decoder_dropout": 0.1, "attention_rnn_dim": 1024,
    "attention_dim": 128, "attention_location_n_filters": 32,
    "attention_location_kernel_size": 31, "postnet_embedding_dim": 512, "postnet_kernel_size": 5,
    "postnet_n_convolutions": 5, "learning_rate": 1e-3, "weight_decay": 1e-6,
    "grad_clip_thresh": 1.0, "batch_size": 64, "mask_padding": True,
    "p_encoder_dropout": 0.5, "p_postnet_dropout": 0.5, "p_prenet_dropout": 0.5,
}


@pytest.mark.parametrize("name", sorted(NVIDIA_HPARAMS))
def test_nvidia_preset_is_the_original_recipe(name):
    hp = create_hparams("preset=nvidia")
    assert getattr(hp, name) == NVIDIA_HPARAMS[name]


def test_nvidia_preset_trains_without_our_additions():
    hp = create_hparams("preset=nvidia")
    assert hp.lr_schedule == "constant" and hp.guide_loss_weight == 0.0


def test_from_dict_rejects_unknown_names_and_differences():
    with pytest.raises(HParamsError, match="unknown hparam"):
        HParams.from_dict({"batch_size": 2, "wat": 1})
    assert create_hparams("batch_size=2").differences() == {"batch_size": 2}
    assert parse_overrides("") == {}


# ---------------------------------------------------------------------------- value checks

@pytest.mark.parametrize("text, message", [
    ("learning_rate=0", "hparam learning_rate=0.0: must be > 0 (e.g. 1e-3)"),
    ("learning_rate=-1e-3", "hparam learning_rate=-0.001: must be > 0 (e.g. 1e-3)"),
    ("learning_rate=1e400", "hparam learning_rate=inf: must be a finite number"),
    ("learning_rate=nan", "hparam learning_rate=nan: must be a finite number"),
    ("min_learning_rate=0", "hparam min_learning_rate=0.0: must be > 0 (e.g. 1e-3)"),
    ("weight_decay=-1e-6", "hparam weight_decay=-1e-06: must be >= 0"),
    ("grad_clip_thresh=0", "hparam grad_clip_thresh=0.0: must be > 0"),
    ("max_steps=-1", "hparam max_steps=-1: must be >= 0"),
    ("epochs=0", "hparam epochs=0: must be >= 1"),
    ("keep_checkpoints=-2", "hparam keep_checkpoints=-2: must be >= 0"),
    ("iters_per_log=0", "hparam iters_per_log=0: must be >= 1"),
    ("iters_per_validation=0", "hparam iters_per_validation=0: must be >= 1"),
    ("iters_per_checkpoint=0", "hparam iters_per_checkpoint=0: must be >= 1"),
    ("iters_per_audio=-1", "hparam iters_per_audio=-1: must be >= 0"),
    ("free_running_every=-1", "hparam free_running_every=-1: must be >= 0"),
    ("free_running_items=0", "hparam free_running_items=0: must be >= 1"),
    ("p_decoder_dropout=-0.1", "hparam p_decoder_dropout=-0.1: must be between 0 and 1"),
    ("guide_loss_weight=-2", "hparam guide_loss_weight=-2.0: must be >= 0"),
    ("guide_scale=-1", "hparam guide_scale=-1.0: must be >= 0"),
    ("guide_lowbound=1.5", "hparam guide_lowbound=1.5: must be between 0 and 1"),
    ("guide_decay_start=-5", "hparam guide_decay_start=-5: must be >= 0"),
    ("guide_decay_steps=-5", "hparam guide_decay_steps=-5: must be >= 0"),
    ("gate_positive_weight=0", "hparam gate_positive_weight=0.0: must be > 0"),
    ("gate_threshold=-0.5", "hparam gate_threshold=-0.5: must be >= 0"),
    ("max_audio_seconds=0", "hparam max_audio_seconds=0.0: must be > 0"),
    ("min_audio_seconds=-1", "hparam min_audio_seconds=-1.0: must be > 0"),
    ("min_audio_seconds=5,max_audio_seconds=4",
     "hparam min_audio_seconds=5.0: must be below max_audio_seconds=4"),
    ("batch_size=1e30", "hparam batch_size=1e+30: must be a whole number below 2**53"),
    ("max_steps=9007199254740992", "hparam max_steps=9.01e+15: must be a whole number below "
                                   "2**53"),
    ("success_thresholds=[0.1,inf,0.5,0.7]",
     "hparam success_thresholds=[0.1, inf, 0.5, 0.7]: every entry must be a finite number"),
    ("seed=-1", "hparam seed=-1: must be between 0 and 2**32 - 1 (numpy's seed range)"),
    ("lr_decay_factor=1", "hparam lr_decay_factor=1.0: must be in (0, 1): the learning rate is "
                          "multiplied by it"),
    ("mel_fmin=8000", "hparam mel_fmax=8000.0: must be above mel_fmin=8000"),
    ("num_workers=-1", "hparam num_workers=-1: must be >= 0"),
    ("divergence_factor=1", "hparam divergence_factor=1.0: must be > 1: a loss above this many "
                            "times the running median counts as an explosion"),
    ("divergence_window=0", "hparam divergence_window=0: must be >= 1"),
    ("max_bad_steps=0", "hparam max_bad_steps=0: must be >= 1"),
    ("divergence_lr_factor=0", "hparam divergence_lr_factor=0.0: must be in (0, 1]: the learning "
                               "rate is multiplied by it on a rollback"),
    ("divergence_lr_factor=1.5", "hparam divergence_lr_factor=1.5: must be in (0, 1]: the "
                                 "learning rate is multiplied by it on a rollback"),
])
def test_each_bad_value_gives_its_one_line_error(text, message):
    with pytest.raises(HParamsError) as info:
        create_hparams(text)
    assert str(info.value) == message
    assert info.value.problems == [message]


def test_every_bad_value_is_reported_on_one_line():
    with pytest.raises(HParamsError) as info:
        create_hparams("learning_rate=1e400,batch_size=0,guide_lowbound=2")
    assert info.value.problems == ["hparam learning_rate=inf: must be a finite number",
                                   "hparam batch_size=0: must be >= 1",
                                   "hparam guide_lowbound=2.0: must be between 0 and 1"]
    assert str(info.value) == "; ".join(info.value.problems) and "\n" not in str(info.value)


def _fields_of(typ):
    import dataclasses
    import typing
    hints = typing.get_type_hints(HParams)
    return [f.name for f in dataclasses.fields(HParams) if hints[f.name] is typ]


@pytest.mark.parametrize("name", _fields_of(float))
def test_every_float_must_be_finite(name):
    for text in ("inf", "-inf", "nan", "1e400"):
        with pytest.raises(HParamsError) as info:
            create_hparams(f"{name}={text}")
        shown = "nan" if text == "nan" else ("-inf" if text == "-inf" else "inf")
        assert info.value.problems == [f"hparam {name}={shown}: must be a finite number"]


@pytest.mark.parametrize("name", _fields_of(int))
def test_every_integer_is_bounded(name):
    with pytest.raises(HParamsError) as info:
        create_hparams(f"{name}=1e30")
    assert info.value.problems == [f"hparam {name}=1e+30: must be a whole number below 2**53"]


def test_replace_checks_types_too():
    hp = HParams()
    with pytest.raises(HParamsError, match=r"^hparam learning_rate='fast': must be a number$"):
        hp.replace(learning_rate="fast")
    with pytest.raises(HParamsError, match=r"^hparam batch_size=2.5: must be a whole number$"):
        hp.replace(batch_size=2.5)
    with pytest.raises(HParamsError, match=r"^hparam curriculum=1: must be true or false$"):
        hp.replace(curriculum=1)
    assert hp.replace(learning_rate=1).learning_rate == 1  # an int is a number
    import numpy as np
    assert hp.replace(max_steps=np.int64(7), learning_rate=np.float32(1e-3)).max_steps == 7


def test_divergence_guard_defaults_and_limits():
    hp = HParams()
    assert (hp.divergence_factor, hp.divergence_window, hp.max_bad_steps,
            hp.divergence_lr_factor) == (10.0, 100, 5, 0.5)
    edge = create_hparams("divergence_factor=1.01,divergence_window=1,max_bad_steps=1,"
                          "divergence_lr_factor=1")
    assert edge.divergence_lr_factor == 1.0
    # boundaries that are fine
    create_hparams("max_steps=0,keep_checkpoints=0,iters_per_audio=0,free_running_every=0,"
                   "guide_loss_weight=0,guide_lowbound=0,guide_lowbound=1,gate_threshold=0,"
                   "weight_decay=0,guide_decay_steps=0,batch_size=9007199254740991")
