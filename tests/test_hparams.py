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


def test_nvidia_preset_is_the_original_recipe():
    hp = create_hparams("preset=nvidia")
    assert hp.learning_rate == 1e-3 and hp.lr_schedule == "constant"
    assert hp.guide_loss_weight == 0.0
    assert hp.p_attention_dropout == hp.p_decoder_dropout == 0.5


def test_from_dict_rejects_unknown_names_and_differences():
    with pytest.raises(HParamsError, match="unknown hparam"):
        HParams.from_dict({"batch_size": 2, "wat": 1})
    assert create_hparams("batch_size=2").differences() == {"batch_size": 2}
    assert parse_overrides("") == {}
