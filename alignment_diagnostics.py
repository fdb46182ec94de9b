"""Alignment diagnostics: metrics, success criteria, red flags, reports, plots and the CLI.

The metrics here are the only implementation: training imports `batch_metrics`,
`criterion_for_step`, `red_flags` and `plot_alignment_to_numpy` from this module.

Usage (DESIGN.md, "Commands"):

    python alignment_diagnostics.py                # newest checkpoint or snapshot of output/trial_0
    python alignment_diagnostics.py --step=1200    # checkpoint_1200, else alignments/step_1200.npz
    python alignment_diagnostics.py --checkpoint=output/trial_0/checkpoint_LATEST [--inference]
    python alignment_diagnostics.py --alignment=attention.npy   # a (decoder steps, tokens) matrix
    python alignment_diagnostics.py --history      # diagonality over the run (diagnostics.jsonl)
    python alignment_diagnostics.py --step=1200 --json   # for machines; --lang ru: in Russian

Exit status: 0 a report, 2 bad input (one line on stderr), 3 a red flag with --fail-on-red-flag.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import sys
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hparams import HParams

METRIC_NAMES = ("diagonal_score", "focus_score", "max_attention", "coverage", "monotonic_score",
                "end_reached", "entropy")
FAILURE_MODES = ("horizontal_band", "diffuse", "collapse_to_end", "skipping", "stuck")
HEALTHY = "healthy"
DEFAULT_BAND = 0.15

# Failure-mode thresholds (DESIGN.md, "Alignment metrics"); fixed by the contract, not hparams.
BAND_MAX_COVERAGE = 0.2  # horizontal_band: coverage below this ...
BAND_MIN_FOCUS = 0.5  # ... while focus is above this
DIFFUSE_MAX_ATTENTION = 0.1  # diffuse: no weight reaches this
SKIP_MAX_COVERAGE = 0.9  # skipping: reaches the end with coverage below this
STUCK_SECONDS = 0.5  # stuck: one token holds the argmax longer than this
COVERED_MASS = 0.5  # a token is covered when its column holds this much attention
HOLD_MIN_WEIGHT = 0.5  # a step is held when its max weight exceeds max(0.1, min(this, 2/N))
ROW_SUM_TOLERANCE = 0.02  # input check: |row sum - 1| allowed (bf16/fp16 softmax)
_CHUNK_ELEMENTS = 4_000_000  # items per vectorised chunk are limited to about this many cells

TRAIN_COMMAND = "python train.py --output_directory=output --log_directory=logs"
_checkpoint_re = re.compile(r"^checkpoint_(\d+)$")  # checkpoint_<step> (NVIDIA's naming)
_snapshot_re = re.compile(r"^step_(\d+)\.npz$")  # alignments/step_<step>.npz
_step_in_name_re = re.compile(r"step_?(\d+)")  # a step number in a loose file's name


class DiagnosticsError(ValueError):
    """Bad input to the diagnostics: a missing, corrupt or foreign file, or a malformed matrix."""


# ============================================================================ messages (en, ru)
# Every string a report shows, in both languages; `tests` check that the keys and fields match.
MESSAGES: Dict[str, Dict[str, str]] = {
    "en": {
        "title": "Alignment diagnostics, step {step}",
        "title_nostep": "Alignment diagnostics (step unknown)",
        "source_snapshot": "Source: alignment snapshot {path} (teacher-forced validation)",
        "source_matrix": "Source: attention matrix {path}",
        "source_checkpoint": ("Source: checkpoint {path}, validation filelist {filelist}, "
                              "teacher-forced on {device}"),
        "n_items": "Utterances: {n}",
        "hparams_from": "hparams: {where}",
        "hp_checkpoint": "from the checkpoint",
        "hp_run": "the run's hparams.json",
        "hp_defaults": "defaults",
        "metrics_header": "Metrics (mean over utterances):",
        "m_diagonal_score": "diagonality",
        "m_focus_score": "focus",
        "m_max_attention": "max attention weight",
        "m_coverage": "coverage",
        "m_monotonic_score": "monotonicity",
        "m_end_reached": "end reached",
        "m_entropy": "normalised entropy",
        "modes_header": "Failure modes (utterances):",
        "mode_healthy": "healthy",
        "mode_horizontal_band": "horizontal band",
        "mode_diffuse": "diffuse attention",
        "mode_collapse_to_end": "collapse to the end",
        "mode_skipping": "skipping tokens",
        "mode_stuck": "stuck on a token",
        "criterion_header": "Success criterion:",
        "criterion_line": ("milestone step {step}: diagonality > {threshold:.0%}; measured "
                           "{value:.1%}: {verdict}"),
        "pass": "PASS",
        "fail": "FAIL",
        "next_milestone": "next milestone: diagonality > {threshold:.0%} at step {step}",
        "last_milestone": "this is the last milestone",
        "before_first": ("no milestone yet; the first is diagonality > {threshold:.0%} at step "
                         "{step}"),
        "no_step": "step unknown: success criteria and red flags are not judged",
        "flags_header": "Red flags:",
        "flags_none": "none",
        "flags_no_step": "not judged (step unknown)",
        "flags_not_yet": "not checked before step {start}",
        "flag_line": "#{id} {name}: {message}",
        "guided_term": "guided-attention term (weight x loss): {value:.4f} ({where})",
        "guided_from_log": "from diagnostics.jsonl",
        "guided_computed": "computed from the hparams' schedule and these maps",
        "free_header": "Free-running decoding (from text alone, {n} utterances):",
        "free_hit_max": "{k} of {n} did not stop within max_decoder_steps: {names}",
        "recs_header": "Recommendations:",
        "plot_line": "Plot: {path}",
        "notes_header": "Notes:",
        "flag1_name": "low diagonality",
        "flag1": "diagonality {value:.1%} is below {threshold:.0%} at step {step}",
        "flag2_name": "guidance without grip",
        "flag2": ("the guided-attention term {value:.4f} (weight x loss) is below {threshold} "
                  "while diagonality {diagonal:.1%} misses the step-{milestone} criterion "
                  "({criterion:.0%}): the guidance is mis-wired or has decayed away"),
        "flag3_name": "all attention weights low",
        "flag3": ("every validation utterance has max attention below {threshold}: all alignment "
                  "weights are low"),
        "flag4_name": "horizontal bands",
        "flag4": ("{count} of {n} validation utterances show a horizontal band (flag from "
                  "{share:.0%})"),
        "rec_check_data": ("Check the data: python check_data.py {train} {val} (text-audio pairs "
                           "that match, one sample rate, no long silences)."),
        "rec_data_mismatch": ("Attention skips tokens or runs to the end: transcripts that do not "
                              "match their audio do this. Check the data: python check_data.py "
                              "{train} {val}."),
        "rec_guide_weight": ("Raise the guided-attention weight (now {weight}): "
                             "--hparams=\"guide_loss_weight=5.0\"."),
        "rec_curriculum": ("Turn curriculum learning on (short texts first): "
                           "--hparams=\"curriculum=True\"."),
        "rec_guidance_off": ("The guided-attention term is almost zero: check guide_loss_weight "
                             "(now {weight}) and the decay schedule (guide_decay_start={start}, "
                             "weight at this step {current:.3g}); guide_loss_weight=5.0 restores "
                             "the guidance."),
        "rec_trim_silence": ("One token holds the attention for over {seconds} s, often a long "
                             "pause at the start or end of the audio: "
                             "--hparams=\"trim_silence=True\"."),
        "rec_warm_start": ("If this persists over the next checks, warm-start from NVIDIA's "
                           "published checkpoint: python train.py -c tacotron2_statedict.pt "
                           "--warm_start."),
        "rec_keep_waiting": ("On track: keep training and check again at step {next} "
                             "(python alignment_diagnostics.py --step={next})."),
        "rec_too_early": ("Too early to judge: the first milestone is step {step} (diagonality > "
                          "{threshold:.0%}); keep training."),
        "rec_gate": ("{k} utterance(s) ran to max_decoder_steps when decoding from text alone: "
                     "usual before attention is clean; if it lasts, trim_silence=True gives the "
                     "gate a clear end."),
        "rec_no_step": ("Step unknown: analyse a snapshot or checkpoint, or pass --step, to judge "
                        "the success criteria."),
        "note_hparams_bad": "could not use {path} ({error}); default hparams used",
        "note_fallback": ("{path} could not be evaluated ({error}); the snapshot {snapshot} was "
                          "used"),
        "note_guided_unavailable": "guided-attention term unknown ({error}); red flag 2 not judged",
        "note_remediated": ("the run has remediated a red flag (guide_loss_weight={weight}, "
                            "curriculum on); the advice takes that into account"),
        "history_header": "Diagonality over the run ({path}):",
        "history_columns": "step     diag   focus  cover  guided   criterion      flags",
        "history_plot": "Plot: {path}",
        "plot_title": "step {step}, {name}: diagonality {diagonal:.2f}, {modes}",
        "plot_decoder": "decoder step",
        "plot_token": "text token",
        "plot_focus": "max weight",
        "plot_items": "diagonality per utterance",
        "plot_band": "diagonal band",
        "plot_path": "argmax path",
        "plot_history_title": "Diagonality over training",
        "plot_history_step": "step",
        "plot_criteria": "success criteria",
        "plot_red_flag": "red-flag threshold",
        "plot_free": "free-running",
        "plot_teacher": "teacher-forced",
        "plot_flagged": "red flag",
    },
    "ru": {
        "title": "Диагностика alignment, шаг {step}",
        "title_nostep": "Диагностика alignment (шаг неизвестен)",
        "source_snapshot": "Источник: снимок alignment {path} (валидация с teacher forcing)",
        "source_matrix": "Источник: матрица внимания {path}",
        "source_checkpoint": ("Источник: чекпойнт {path}, валидационный список {filelist}, "
                              "teacher forcing на {device}"),
        "n_items": "Фраз: {n}",
        "hparams_from": "гиперпараметры: {where}",
        "hp_checkpoint": "из чекпойнта",
        "hp_run": "hparams.json запуска",
        "hp_defaults": "значения по умолчанию",
        "metrics_header": "Метрики (среднее по фразам):",
        "m_diagonal_score": "диагональность",
        "m_focus_score": "фокус",
        "m_max_attention": "макс. вес внимания",
        "m_coverage": "покрытие",
        "m_monotonic_score": "монотонность",
        "m_end_reached": "конец достигнут",
        "m_entropy": "нормированная энтропия",
        "modes_header": "Типы сбоев (число фраз):",
        "mode_healthy": "норма",
        "mode_horizontal_band": "горизонтальная полоса",
        "mode_diffuse": "размытое внимание",
        "mode_collapse_to_end": "схлопывание к концу",
        "mode_skipping": "пропуск символов",
        "mode_stuck": "застревание на символе",
        "criterion_header": "Критерий успеха:",
        "criterion_line": ("рубеж шага {step}: диагональность > {threshold:.0%}; измерено "
                           "{value:.1%}: {verdict}"),
        "pass": "ПРОЙДЕН",
        "fail": "НЕ ПРОЙДЕН",
        "next_milestone": "следующий рубеж: диагональность > {threshold:.0%} на шаге {step}",
        "last_milestone": "это последний рубеж",
        "before_first": ("рубеж ещё не наступил; первый: диагональность > {threshold:.0%} на шаге "
                         "{step}"),
        "no_step": "шаг неизвестен: критерии успеха и red flags не проверяются",
        "flags_header": "Red flags (тревожные признаки):",
        "flags_none": "нет",
        "flags_no_step": "не проверяются (шаг неизвестен)",
        "flags_not_yet": "не проверяются до шага {start}",
        "flag_line": "#{id} {name}: {message}",
        "guided_term": "вклад guided attention (вес x loss): {value:.4f} ({where})",
        "guided_from_log": "из diagnostics.jsonl",
        "guided_computed": "вычислен по расписанию из гиперпараметров и этим картам",
        "free_header": "Свободное декодирование (только по тексту, фраз: {n}):",
        "free_hit_max": "{k} из {n} не остановились за max_decoder_steps: {names}",
        "recs_header": "Рекомендации:",
        "plot_line": "График: {path}",
        "notes_header": "Примечания:",
        "flag1_name": "низкая диагональность",
        "flag1": "диагональность {value:.1%} ниже {threshold:.0%} на шаге {step}",
        "flag2_name": "guided attention не действует",
        "flag2": ("вклад guided attention {value:.4f} (вес x loss) ниже {threshold}, а "
                  "диагональность {diagonal:.1%} не проходит критерий шага {milestone} "
                  "({criterion:.0%}): guided loss не подключён или затух"),
        "flag3_name": "все веса внимания малы",
        "flag3": ("у каждой валидационной фразы максимальный вес внимания ниже {threshold}: все "
                  "веса alignment малы"),
        "flag4_name": "горизонтальные полосы",
        "flag4": ("горизонтальная полоса у {count} из {n} валидационных фраз (порог: "
                  "{share:.0%})"),
        "rec_check_data": ("Проверьте данные: python check_data.py {train} {val} (пары "
                           "текст-аудио совпадают, одна частота дискретизации, нет длинных пауз)."),
        "rec_data_mismatch": ("Внимание пропускает символы или уходит в конец: так бывает, когда "
                              "текст не соответствует аудио. Проверьте данные: python "
                              "check_data.py {train} {val}."),
        "rec_guide_weight": ("Увеличьте вес guided attention (сейчас {weight}): "
                             "--hparams=\"guide_loss_weight=5.0\"."),
        "rec_curriculum": ("Включите curriculum learning (сначала короткие тексты): "
                           "--hparams=\"curriculum=True\"."),
        "rec_guidance_off": ("Вклад guided attention почти нулевой: проверьте guide_loss_weight "
                             "(сейчас {weight}) и расписание затухания (guide_decay_start={start}, "
                             "вес на этом шаге {current:.3g}); guide_loss_weight=5.0 возвращает "
                             "направляющую силу."),
        "rec_trim_silence": ("Один символ удерживает внимание дольше {seconds} с, часто это "
                             "длинная пауза в начале или конце аудио: "
                             "--hparams=\"trim_silence=True\"."),
        "rec_warm_start": ("Если это не пройдёт за следующие проверки, начните с "
                           "опубликованного чекпойнта NVIDIA: python train.py -c "
                           "tacotron2_statedict.pt --warm_start."),
        "rec_keep_waiting": ("Всё идёт по плану: продолжайте обучение и проверьте снова на шаге "
                             "{next} (python alignment_diagnostics.py --step={next})."),
        "rec_too_early": ("Судить рано: первый рубеж на шаге {step} (диагональность > "
                          "{threshold:.0%}); продолжайте обучение."),
        "rec_gate": ("{k} фраз(ы) дошли до max_decoder_steps при декодировании только по тексту: "
                     "обычно до того, как внимание станет чистым; если это не проходит, "
                     "trim_silence=True даёт gate чёткий конец."),
        "rec_no_step": ("Шаг неизвестен: проанализируйте снимок или чекпойнт либо укажите "
                        "--step, чтобы проверить критерии успеха."),
        "note_hparams_bad": ("не удалось использовать {path} ({error}); взяты гиперпараметры по "
                             "умолчанию"),
        "note_fallback": ("{path} не удалось оценить ({error}); использован снимок {snapshot}"),
        "note_guided_unavailable": ("вклад guided attention неизвестен ({error}); red flag 2 не "
                                    "проверяется"),
        "note_remediated": ("запуск уже исправлял red flag (guide_loss_weight={weight}, "
                            "curriculum включён); рекомендации это учитывают"),
        "history_header": "Диагональность по ходу обучения ({path}):",
        "history_columns": "шаг      диаг   фокус  покр.  guided   критерий       флаги",
        "history_plot": "График: {path}",
        "plot_title": "шаг {step}, {name}: диагональность {diagonal:.2f}, {modes}",
        "plot_decoder": "шаг декодера",
        "plot_token": "символ текста",
        "plot_focus": "макс. вес",
        "plot_items": "диагональность по фразам",
        "plot_band": "диагональная полоса",
        "plot_path": "путь argmax",
        "plot_history_title": "Диагональность по ходу обучения",
        "plot_history_step": "шаг",
        "plot_criteria": "критерии успеха",
        "plot_red_flag": "порог red flag",
        "plot_free": "свободное декодирование",
        "plot_teacher": "teacher forcing",
        "plot_flagged": "red flag",
    },
}
LANGUAGES = tuple(MESSAGES)


def _msg(lang: str, key: str, **fields: Any) -> str:
    if lang not in MESSAGES:
        raise DiagnosticsError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return MESSAGES[lang][key].format(**fields)


# ============================================================================ metrics
def _to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """ndarray from an array, a list or a (possibly GPU, possibly bf16) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _batch_stats(alignments: np.ndarray, text_lengths: np.ndarray, decoder_lengths: np.ndarray,
                 band: float) -> Dict[str, np.ndarray]:
    """Per-item metrics and the argmax statistics the failure modes need, vectorised.

    Args:
        alignments: (B, T_max, N_max) attention, rows = decoder steps, zero-padded (whatever the
            padding holds is ignored).
        text_lengths: (B,) tokens N_b, 1 <= N_b <= N_max.
        decoder_lengths: (B,) decoder steps T_b, 1 <= T_b <= T_max.
        band: b of diagonal_score.

    Returns:
        dict of (B,) arrays: the METRIC_NAMES, `last_token_share` (steps whose argmax is the last
        token), `longest_hold` (longest run of steps on one argmax token) and `hold_token`.
    """
    A = np.asarray(alignments, dtype=np.float64)
    n_items, max_t, max_n = A.shape
    T = decoder_lengths.astype(np.int64)
    N = text_lengths.astype(np.int64)
    Tf, Nf = T.astype(np.float64), N.astype(np.float64)
    t = np.arange(max_t)
    n = np.arange(max_n)
    row_valid = t[None, :] < T[:, None]  # (B, T)
    col_valid = n[None, :] < N[:, None]  # (B, N)
    valid = row_valid[:, :, None] & col_valid[:, None, :]  # (B, T, N)
    A = np.where(valid, A, 0.0)

    # Band of the ideal diagonal, on cell centres of each item's own (T_b, N_b) grid.
    t_pos = (t[None, :] + 0.5) / Tf[:, None]  # (B, T)
    n_pos = (n[None, :] + 0.5) / Nf[:, None]  # (B, N)
    in_band = (np.abs(n_pos[:, None, :] - t_pos[:, :, None]) <= band + 1e-9) & valid
    mass = (A * in_band).sum(axis=(1, 2)) / Tf
    chance = in_band.sum(axis=(1, 2)) / (Tf * Nf)  # M of uniform attention A = 1/N
    # chance == 1 only on degenerate grids (every cell in the band): no information, score 0.
    diagonal = np.where(chance < 1.0,
                        np.clip((mass - chance) / np.maximum(1.0 - chance, 1e-12), 0.0, 1.0), 0.0)

    row_max = A.max(axis=2)  # (B, T); padded rows are 0
    focus = row_max.sum(axis=1) / Tf
    max_attention = row_max.max(axis=1)
    column_mass = A.sum(axis=1)  # (B, N)
    coverage = ((column_mass >= COVERED_MASS) & col_valid).sum(axis=1) / Nf

    argmax = np.where(valid, A, -1.0).argmax(axis=2)  # (B, T); padding never wins
    forward = (argmax[:, 1:] >= argmax[:, :-1]) & row_valid[:, 1:]  # (B, T-1)
    monotonic = np.where(T > 1, forward.sum(axis=1) / np.maximum(Tf - 1.0, 1.0), 1.0)
    last_argmax = argmax[np.arange(n_items), T - 1]
    end_reached = last_argmax >= N - 2

    log_a = np.log(np.where(A > 0.0, A, 1.0))  # 0 log 0 = 0
    row_entropy = -(A * log_a).sum(axis=2)  # (B, T)
    entropy = np.where(N > 1, row_entropy.sum(axis=1) / Tf / np.log(np.maximum(Nf, 2.0)), 0.0)

    # A step is held by its argmax token when the top weight stands out (> 0.1 and > twice
    # uniform): the argmax of a near-uniform row is noise, so such rows count neither for
    # collapse_to_end nor for stuck. Uniform attention is diffuse, not stuck.
    threshold = np.maximum(DIFFUSE_MAX_ATTENTION, np.minimum(HOLD_MIN_WEIGHT, 2.0 / Nf))
    held = row_valid & (row_max > threshold[:, None])  # (B, T)
    last_token_share = ((argmax == (N - 1)[:, None]) & held).sum(axis=1) / Tf

    # Longest run of steps held by one token.
    tokens = np.where(held, argmax, -1)
    starts = np.ones(tokens.shape, dtype=bool)
    starts[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    start_pos = np.flatnonzero(starts)  # every row starts a run at t = 0
    run_len = np.diff(np.append(start_pos, tokens.size))
    run_item = start_pos // max_t
    run_token = tokens.reshape(-1)[start_pos]
    keep = run_token >= 0
    run_len, run_item, run_token = run_len[keep], run_item[keep], run_token[keep]
    longest_hold = np.zeros(n_items, dtype=np.int64)
    hold_token = np.zeros(n_items, dtype=np.int64)
    if run_item.size:
        order = np.lexsort((run_len, run_item))  # by item, then by run length
        items_sorted = run_item[order]
        last_of_item = order[np.append(items_sorted[1:] != items_sorted[:-1], True)]
        longest_hold[run_item[last_of_item]] = run_len[last_of_item]
        hold_token[run_item[last_of_item]] = run_token[last_of_item]

    return {"diagonal_score": diagonal, "focus_score": focus, "max_attention": max_attention,
            "coverage": coverage, "monotonic_score": monotonic, "end_reached": end_reached,
            "entropy": entropy, "last_token_share": last_token_share,
            "longest_hold": longest_hold, "hold_token": hold_token}


def _mode_flags(coverage: np.ndarray, focus: np.ndarray, max_attention: np.ndarray,
                end_reached: np.ndarray, last_token_share: np.ndarray, n_tokens: np.ndarray,
                longest_hold: np.ndarray,
                seconds_per_step: Optional[float]) -> Dict[str, np.ndarray]:
    """The failure-mode rules of DESIGN.md on (B,) arrays: {mode: Bool (B,)}."""
    coverage, focus = np.asarray(coverage), np.asarray(focus)
    flags = {
        "horizontal_band": (coverage < BAND_MAX_COVERAGE) & (focus > BAND_MIN_FOCUS),
        "diffuse": np.asarray(max_attention) < DIFFUSE_MAX_ATTENTION,
        # With one token every step is "on the last token": no collapse can be told apart.
        "collapse_to_end": (np.asarray(last_token_share) > 0.5) & (np.asarray(n_tokens) > 1),
        "skipping": (coverage < SKIP_MAX_COVERAGE) & np.asarray(end_reached, dtype=bool),
    }
    if seconds_per_step is None:
        flags["stuck"] = np.zeros(coverage.shape, dtype=bool)  # no time scale: not judged
    else:
        # A band or a collapse holds one token by definition; naming it stuck too would point
        # the report at silences instead of at the band.
        flags["stuck"] = ((np.asarray(longest_hold) * float(seconds_per_step) > STUCK_SECONDS)
                          & ~flags["horizontal_band"] & ~flags["collapse_to_end"])
    return flags


def _check_lengths(name: str, lengths: np.ndarray, n_items: int, limit: int) -> np.ndarray:
    if lengths.shape != (n_items,):
        raise DiagnosticsError(f"{name} has shape {lengths.shape}; expected ({n_items},)")
    if n_items and (lengths.min() < 1 or lengths.max() > limit):
        raise DiagnosticsError(f"{name} must lie in 1..{limit} (the padded size); got "
                               f"{int(lengths.min())}..{int(lengths.max())}")
    return lengths.astype(np.int64)


def batch_metrics(alignments: Any, text_lengths: Any, decoder_lengths: Any,
                  seconds_per_step: Optional[float] = None, band: Optional[float] = None,
                  hp: Optional[HParams] = None) -> Dict[str, Any]:
    """Metrics and failure modes of a batch of attention maps, each on its un-padded block.

    Args:
        alignments: (B, T_max, N_max) attention (ndarray or tensor), rows = decoder steps; the
            padding may hold anything.
        text_lengths: (B,) tokens per utterance.
        decoder_lengths: (B,) decoder steps per utterance, `ceil(mel_len / r)`.
        seconds_per_step: r * hop_length / sampling_rate, the time of one decoder step, for the
            `stuck` mode; None = from `hp`, or `stuck` is not judged when `hp` is None too.
        band: b of diagonal_score; None = `hp.diagonal_band`, or 0.15.
        hp: the run's hparams (optional; see above).

    Returns:
        {"mean": {metric: mean over items}, "per_item": [{metric: value, "text_length",
        "decoder_length", "longest_hold_steps", "hold_token"}], "failure_modes": [[mode, ...] or
        ["healthy"] per item], "failure_counts": {mode: items, "healthy": items}, "n_items": B}.
    """
    if band is None:
        band = hp.diagonal_band if hp is not None else DEFAULT_BAND
    if seconds_per_step is None and hp is not None:
        seconds_per_step = step_seconds(hp)
    A = _to_numpy(alignments)
    if A.ndim != 3:
        raise DiagnosticsError(f"alignments must be (B, T, N); got shape {A.shape}")
    n_items, max_t, max_n = A.shape
    N = _check_lengths("text_lengths", _to_numpy(text_lengths).reshape(-1), n_items, max_n)
    T = _check_lengths("decoder_lengths", _to_numpy(decoder_lengths).reshape(-1), n_items, max_t)

    if n_items == 0:
        return {"mean": {k: float("nan") for k in METRIC_NAMES}, "per_item": [],
                "failure_modes": [], "failure_counts": {m: 0 for m in FAILURE_MODES + (HEALTHY,)},
                "n_items": 0}

    # Chunks of items keep the (B, T, N) temporaries to a few tens of MB at any size.
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, max_t * max_n))
    parts = []
    for start in range(0, n_items, per_chunk):
        stop = start + per_chunk
        t_chunk, n_chunk = int(T[start:stop].max()), int(N[start:stop].max())
        parts.append(_batch_stats(A[start:stop, :t_chunk, :n_chunk], N[start:stop],
                                  T[start:stop], band))
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    flags = _mode_flags(stats["coverage"], stats["focus_score"], stats["max_attention"],
                        stats["end_reached"], stats["last_token_share"], N,
                        stats["longest_hold"], seconds_per_step)

    per_item, modes = [], []
    for i in range(n_items):
        item = {k: float(stats[k][i]) for k in METRIC_NAMES if k != "end_reached"}
        item["end_reached"] = bool(stats["end_reached"][i])
        item.update(text_length=int(N[i]), decoder_length=int(T[i]),
                    longest_hold_steps=int(stats["longest_hold"][i]),
                    hold_token=int(stats["hold_token"][i]))
        per_item.append(item)
        modes.append([m for m in FAILURE_MODES if flags[m][i]] or [HEALTHY])
    counts = {m: int(flags[m].sum()) for m in FAILURE_MODES}
    counts[HEALTHY] = sum(1 for m in modes if m == [HEALTHY])
    mean = {k: float(np.mean(stats[k].astype(np.float64))) for k in METRIC_NAMES}
    return {"mean": mean, "per_item": per_item, "failure_modes": modes, "failure_counts": counts,
            "n_items": n_items}


def alignment_metrics(A: Any, band: float = DEFAULT_BAND) -> Dict[str, Any]:
    """Metrics of one attention map (DESIGN.md, "Alignment metrics").

    Args:
        A: (T, N) attention, rows = decoder steps (each summing to 1), columns = text tokens.
        band: b, half-width of the diagonal band in units of the normalised grid.

    Returns:
        {diagonal_score, focus_score, max_attention, coverage, monotonic_score, entropy: float;
        end_reached: bool}.
    """
    A = _to_numpy(A)
    if A.ndim != 2 or A.size == 0:
        raise DiagnosticsError(f"an attention map must be a non-empty (T, N) matrix; got shape "
                               f"{A.shape}")
    T, N = A.shape
    item = batch_metrics(A[None], [N], [T], band=band)["per_item"][0]
    return {k: item[k] for k in METRIC_NAMES}


def classify_failures(A: Any, metrics: Optional[Dict[str, Any]] = None,
                      seconds_per_step: Optional[float] = None) -> List[str]:
    """Failure modes of one attention map, or ["healthy"].

    Args:
        A: (T, N) attention, rows = decoder steps.
        metrics: `alignment_metrics(A)` when already computed (coverage, focus_score,
            max_attention and end_reached are taken from it).
        seconds_per_step: r * hop_length / sampling_rate; None = `stuck` is not judged.

    Returns:
        Names from FAILURE_MODES in that order, or ["healthy"] when none applies.
    """
    A = _to_numpy(A)
    if A.ndim != 2 or A.size == 0:
        raise DiagnosticsError(f"an attention map must be a non-empty (T, N) matrix; got shape "
                               f"{A.shape}")
    T, N = A.shape
    stats = _batch_stats(A[None], np.array([N]), np.array([T]), DEFAULT_BAND)
    m = metrics or {k: stats[k][0] for k in METRIC_NAMES}
    flags = _mode_flags(np.array([m["coverage"]]), np.array([m["focus_score"]]),
                        np.array([m["max_attention"]]), np.array([bool(m["end_reached"])]),
                        stats["last_token_share"], np.array([N]), stats["longest_hold"],
                        seconds_per_step)
    return [mode for mode in FAILURE_MODES if flags[mode][0]] or [HEALTHY]


def step_seconds(hp: HParams) -> float:
    """Seconds of audio per decoder step: r * hop_length / sampling_rate."""
    return hp.n_frames_per_step * hp.hop_length / hp.sampling_rate


# ============================================================================ criteria and flags
def criterion_for_step(step: int, hp: HParams,
                       diagonal_score: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """The success criterion that judges `step`: the largest milestone at or below it.

    Args:
        step: training step.
        hp: `success_steps` and `success_thresholds` are read.
        diagonal_score: when given, `value` and `passed` (value > threshold) are added.

    Returns:
        None before the first milestone, else {"step", "threshold", "next_step",
        "next_threshold"} (the next two None at the last milestone), plus "value" and "passed".
    """
    steps, thresholds = list(hp.success_steps), list(hp.success_thresholds)
    i = bisect.bisect_right(steps, step) - 1
    if i < 0:
        return None
    has_next = i + 1 < len(steps)
    out: Dict[str, Any] = {"step": int(steps[i]), "threshold": float(thresholds[i]),
                           "next_step": int(steps[i + 1]) if has_next else None,
                           "next_threshold": float(thresholds[i + 1]) if has_next else None}
    if diagonal_score is not None:
        out["value"] = float(diagonal_score)
        out["passed"] = bool(diagonal_score > thresholds[i])
    return out


def next_milestone(step: int, hp: HParams) -> Optional[Dict[str, Any]]:
    """The first milestone after `step`: {"step", "threshold"}, or None after the last."""
    i = bisect.bisect_right(list(hp.success_steps), step)
    if i >= len(hp.success_steps):
        return None
    return {"step": int(hp.success_steps[i]), "threshold": float(hp.success_thresholds[i])}


def red_flags(step: int, summary: Dict[str, Any], guided_term: Optional[float], hp: HParams,
              lang: str = "en") -> List[Dict[str, Any]]:
    """The red flags of DESIGN.md that are up at `step` (none before `hp.red_flag_start_step`).

    Args:
        step: training step of the validation.
        summary: `batch_metrics` output; a diagnostics.jsonl record ("metrics", "failure_counts",
            "n_items") works too (flag 3 then counts `diffuse` items).
        guided_term: guided-attention weight x loss as it entered the total; None = unknown (flag 2
            is not judged).
        hp: thresholds (`red_flag_*`) and success criteria.
        lang: language of the messages.

    Returns:
        [{"id": 1..4, "name": str, "message": str}], in id order.
    """
    if step is None or step < hp.red_flag_start_step:
        return []
    mean = summary.get("mean") or summary.get("metrics") or {}
    diagonal = float(mean["diagonal_score"])
    per_item = summary.get("per_item")
    counts = summary.get("failure_counts") or {}
    n_items = int(summary.get("n_items", len(per_item) if per_item is not None else 0))
    flags = []

    def add(flag_id: int, **fields: Any) -> None:
        flags.append({"id": flag_id, "name": _msg(lang, f"flag{flag_id}_name"),
                      "message": _msg(lang, f"flag{flag_id}", **fields)})

    if diagonal < hp.red_flag_diagonal:
        add(1, value=diagonal, threshold=hp.red_flag_diagonal, step=step)
    criterion = criterion_for_step(step, hp, diagonal)
    if (guided_term is not None and guided_term < hp.red_flag_guided_term
            and criterion is not None and not criterion["passed"]):
        add(2, value=float(guided_term), threshold=hp.red_flag_guided_term, diagonal=diagonal,
            milestone=criterion["step"], criterion=criterion["threshold"])
    if per_item:
        all_low = all(item["max_attention"] < hp.red_flag_max_attention for item in per_item)
    else:
        all_low = n_items > 0 and counts.get("diffuse", 0) == n_items
    if all_low:
        add(3, threshold=hp.red_flag_max_attention)
    bands = int(counts.get("horizontal_band", 0))
    if n_items > 0 and bands / n_items >= hp.red_flag_band_share:
        add(4, count=bands, n=n_items, share=hp.red_flag_band_share)
    return flags


# ============================================================================ run folder
def _run_dir(output_directory: str, run_name: str) -> str:
    return os.path.join(output_directory, run_name)


def list_run_steps(run_dir: str) -> Tuple[Dict[int, str], Dict[int, str]]:
    """({step: checkpoint path}, {step: snapshot path}) found in a run folder."""
    checkpoints, snapshots = {}, {}
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            match = _checkpoint_re.match(name)
            if match and os.path.isfile(os.path.join(run_dir, name)):
                checkpoints[int(match.group(1))] = os.path.join(run_dir, name)
    folder = os.path.join(run_dir, "alignments")
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            match = _snapshot_re.match(name)
            if match:
                snapshots[int(match.group(1))] = os.path.join(folder, name)
    return checkpoints, snapshots


def load_run_hparams(run_dir: Optional[str]) -> Tuple[HParams, str, Optional[Dict[str, str]]]:
    """The run's hparams.json, else the defaults.

    Returns:
        (hp, "run" | "defaults", None or {"path", "error"} when hparams.json exists but cannot
        be used: the report says so and goes on with the defaults).
    """
    path = os.path.join(run_dir, "hparams.json") if run_dir else None
    if not path or not os.path.isfile(path):
        return HParams(), "defaults", None
    try:
        with open(path, encoding="utf-8") as f:
            return HParams.from_dict(json.load(f)), "run", None
    except (OSError, ValueError, TypeError) as err:  # HParamsError and JSON errors are ValueErrors
        return HParams(), "defaults", {"path": path, "error": _first_line(err)}


def read_diagnostics_log(path: str) -> List[Dict[str, Any]]:
    """Records of diagnostics.jsonl, in file order.

    A last line without its newline that does not parse is a record still being written by the
    trainer, and is skipped; any other bad line is an error naming the line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise DiagnosticsError(f"{path}: cannot read ({_first_line(err)})") from None
    except UnicodeDecodeError:
        raise DiagnosticsError(f"{path}: not a UTF-8 text file") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the unfinished last line
                continue
            raise DiagnosticsError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DiagnosticsError(f"{path}:{number}: a record needs an integer 'step'")
        records.append(record)
    return records


def _log_records(run_dir: Optional[str], step: Optional[int]) -> List[Dict[str, Any]]:
    """diagnostics.jsonl records up to `step` (none without a run, a step or a log)."""
    if run_dir is None or step is None:
        return []
    path = os.path.join(run_dir, "diagnostics.jsonl")
    if not os.path.isfile(path):
        return []
    return [r for r in read_diagnostics_log(path) if r["step"] <= step]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# ============================================================================ sources
def _check_rows(A: np.ndarray, text_lengths: np.ndarray, decoder_lengths: np.ndarray,
                path: str, names: Optional[Sequence[str]] = None) -> None:
    """Every un-padded row is a distribution over the item's tokens, else DiagnosticsError."""
    max_t, max_n = A.shape[1:]
    rows = np.arange(max_t)[None, :] < decoder_lengths[:, None]  # (B, T)
    cols = np.arange(max_n)[None, :] < text_lengths[:, None]  # (B, N)
    block = np.where(rows[:, :, None] & cols[:, None, :], A, 0.0)
    if not np.isfinite(block).all():
        raise DiagnosticsError(f"{path}: the attention holds NaN or infinite values")
    if (block < 0).any():
        raise DiagnosticsError(f"{path}: the attention holds negative weights")
    sums = block.sum(axis=2)  # (B, T)
    bad = rows & (np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if not bad.any():
        return
    b, t = (int(i) for i in np.argwhere(bad)[0])
    where = f"decoder step {t}"
    if A.shape[0] > 1 or names is not None:  # a snapshot: name the utterance too
        where = f"item {b}" + (f" ({names[b]})" if names is not None else "") + f", {where}"
    hint = ""
    if A.shape[0] == 1:
        column_sums = block[0].sum(axis=0)[: int(text_lengths[0])]
        if np.all(np.abs(column_sums - 1.0) <= ROW_SUM_TOLERANCE):
            hint = ("; its columns sum to 1, so it looks transposed: pass it as (decoder steps, "
                    "tokens)")
    raise DiagnosticsError(
        f"{path}: {where}: the attention row sums to {sums[b, t]:.4f}, not 1 "
        f"(tolerance {ROW_SUM_TOLERANCE}); rows must be decoder steps, each a softmax over the "
        f"tokens{hint}")


def _load_array_file(path: str) -> Any:
    if not os.path.exists(path):
        raise DiagnosticsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DiagnosticsError(f"{path}: is a folder; give a .npy matrix or an alignments .npz")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DiagnosticsError(f"{path}: not a readable .npy or .npz file "
                               f"({_first_line(err)})") from None


def load_alignment_file(path: str) -> Dict[str, Any]:
    """Reads a (T, N) .npy matrix or an `alignments/step_N.npz` snapshot, checked.

    A snapshot needs `alignments`, `text_lengths`, `decoder_lengths` (INTERFACES.md); `step`,
    `n_frames_per_step`/`hop_length`/`sampling_rate`, `names` and the free-running
    `free_alignments`/`free_text_lengths`/`free_decoder_lengths` (+ `free_names`,
    `free_hit_max_steps`) are used when present. Name arrays must be str arrays (no pickle).

    Returns:
        {"kind": "matrix" | "snapshot", "alignments" (B, T, N) float32, "text_lengths",
        "decoder_lengths" (B,) int64, "names" list, "step" int | None, "seconds_per_step" float |
        None, "free" dict | None (free-running arrays of a snapshot)}.

    Raises:
        DiagnosticsError: missing, corrupt or foreign file, wrong shapes, rows not summing to 1.
    """
    data = _load_array_file(path)
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise DiagnosticsError(f"{path}: holds an array of shape {data.shape}; expected a 2-D "
                                   f"(decoder steps, tokens) attention matrix")
        if data.size == 0 or not np.issubdtype(data.dtype, np.number):
            raise DiagnosticsError(f"{path}: an empty or non-numeric {data.dtype} array")
        A = data.astype(np.float64)[None]
        T, N = data.shape
        out = {"kind": "matrix", "alignments": A, "text_lengths": np.array([N]),
               "decoder_lengths": np.array([T]), "names": [os.path.basename(path)],
               "step": None, "seconds_per_step": None, "free": None}
        match = _step_in_name_re.search(os.path.basename(path))
        if match:
            out["step"] = int(match.group(1))
        _check_rows(A, out["text_lengths"], out["decoder_lengths"], path)
        return out
    with data:
        keys = set(data.files)
        missing = {"alignments", "text_lengths", "decoder_lengths"} - keys
        if missing:
            raise DiagnosticsError(
                f"{path}: not an alignment snapshot (missing {', '.join(sorted(missing))}; has "
                f"{', '.join(sorted(keys)) or 'nothing'})")
        try:
            arrays = {k: data[k] for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DiagnosticsError(f"{path}: corrupt snapshot ({_first_line(err)})") from None
    A = arrays["alignments"]
    if A.ndim != 3 or not np.issubdtype(A.dtype, np.number):
        raise DiagnosticsError(f"{path}: 'alignments' has shape {A.shape} ({A.dtype}); expected "
                               f"(B, T, N) numbers")
    if 0 in A.shape:
        raise DiagnosticsError(f"{path}: 'alignments' is empty (shape {A.shape})")
    try:
        text_lengths = _check_lengths("text_lengths", arrays["text_lengths"].reshape(-1),
                                      A.shape[0], A.shape[2])
        decoder_lengths = _check_lengths("decoder_lengths", arrays["decoder_lengths"].reshape(-1),
                                         A.shape[0], A.shape[1])
    except DiagnosticsError as err:
        raise DiagnosticsError(f"{path}: {err}") from None
    stored_names = ([str(x) for x in arrays["names"].reshape(-1)] if "names" in arrays
                    else None)
    _check_rows(A, text_lengths, decoder_lengths, path, stored_names)
    names = stored_names or [f"item {i}" for i in range(A.shape[0])]
    seconds = None
    if {"n_frames_per_step", "hop_length", "sampling_rate"} <= keys:
        seconds = (float(arrays["n_frames_per_step"]) * float(arrays["hop_length"])
                   / float(arrays["sampling_rate"]))
    free = None
    if {"free_alignments", "free_text_lengths", "free_decoder_lengths"} <= keys:
        free = {"alignments": arrays["free_alignments"],
                "text_lengths": arrays["free_text_lengths"].reshape(-1).astype(np.int64),
                "decoder_lengths": arrays["free_decoder_lengths"].reshape(-1).astype(np.int64),
                "names": ([str(x) for x in arrays["free_names"].reshape(-1)]
                          if "free_names" in keys
                          else [f"item {i}" for i in range(arrays["free_alignments"].shape[0])]),
                # optional Bool (B_free,): the gate never fired within max_decoder_steps
                "hit_max_steps": ([bool(x) for x in arrays["free_hit_max_steps"].reshape(-1)]
                                  if "free_hit_max_steps" in keys else None)}
    step = int(arrays["step"]) if "step" in arrays else None
    if step is None:
        match = _snapshot_re.match(os.path.basename(path))
        step = int(match.group(1)) if match else None
    return {"kind": "snapshot", "alignments": A, "text_lengths": text_lengths,
            "decoder_lengths": decoder_lengths, "names": names, "step": step,
            "seconds_per_step": seconds, "free": free}


def pack_alignments(maps: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Un-padded (T_i, N_i) maps -> zero-padded (B, T_max, N_max), text and decoder lengths."""
    max_t = max(a.shape[0] for a in maps)
    max_n = max(a.shape[1] for a in maps)
    out = np.zeros((len(maps), max_t, max_n), dtype=np.float32)
    for i, a in enumerate(maps):
        out[i, : a.shape[0], : a.shape[1]] = a
    return (out, np.array([a.shape[1] for a in maps], dtype=np.int64),
            np.array([a.shape[0] for a in maps], dtype=np.int64))


def evaluate_checkpoint(path: str, device: Optional[str] = None, filelist: Optional[str] = None,
                        inference: bool = False, batch_size: Optional[int] = None
                        ) -> Dict[str, Any]:
    """Teacher-forced (and optionally free-running) attention of a checkpoint on a filelist.

    The model is rebuilt from the checkpoint alone and run in eval mode on the validation
    filelist of its hparams (or `filelist`), in batches.

    Args:
        path: a checkpoint file or `.../checkpoint_LATEST`.
        device: "cpu", "cuda", "cuda:1"...; None = cuda when available, else cpu.
        filelist: overrides `hp.validation_files`.
        inference: also decode every item from its text alone (`model.inference`).
        batch_size: None = `hp.batch_size`.

    Returns:
        The dict of `load_alignment_file` (kind "checkpoint") plus "path", "hp", "filelist",
        "device" and "guided_loss" (mean raw guided-attention loss of the teacher-forced maps).

    Raises:
        DiagnosticsError: an unreadable checkpoint, filelist or wav.
    """
    try:
        import torch
        import checkpoint as checkpoint_module
        from data_utils import TextMelCollate, TextMelDataset, read_filelist
    except ImportError as err:
        raise DiagnosticsError(f"{path}: analysing a checkpoint needs torch, checkpoint.py and "
                               f"data_utils.py ({_first_line(err)})") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise DiagnosticsError(f"--device {device}: not a device name (cpu, cuda, cuda:1 ...)"
                               ) from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise DiagnosticsError(f"--device {device}: CUDA is not available here; use --device cpu")
    try:
        resolved = checkpoint_module.resolve_checkpoint(path)
        model, hp, ckpt = checkpoint_module.model_from_checkpoint(resolved, torch_device)
        filelist = filelist or hp.validation_files
        entries = read_filelist(filelist, hp.data_root)
        dataset = TextMelDataset(entries, hp, cache_dir=None)
    except (ValueError, OSError, RuntimeError) as err:  # CheckpointError, DataError, AudioError
        raise DiagnosticsError(_first_line(err)) from None
    if len(dataset) == 0:
        raise DiagnosticsError(f"{filelist}: no utterances")
    r = hp.n_frames_per_step
    collate = TextMelCollate(r)
    size = batch_size or hp.batch_size
    names_all = [os.path.basename(e.audio_path) for e in entries]
    maps, names, free_maps, free_names, hit_max = [], [], [], [], []
    model.eval()
    fork_devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    # The prenet's dropout stays on in eval mode (as in the paper): a fixed seed, without
    # disturbing the caller's RNG, makes the report reproducible.
    with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
        torch.manual_seed(hp.seed)
        for start in range(0, len(dataset), size):
            indices = list(range(start, min(start + size, len(dataset))))
            try:
                items = [dataset[i] for i in indices]
            except (ValueError, OSError, RuntimeError) as err:
                raise DiagnosticsError(_first_line(err)) from None
            batch = collate(items).to(torch_device)
            order = _match_items(items, batch)  # the collate sorts by text length
            out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
            steps = torch.div(batch.mel_lengths + r - 1, r, rounding_mode="floor")
            alignments = out.alignments.float().cpu().numpy()  # (B, T/r, N)
            for b in range(alignments.shape[0]):
                t, n = int(steps[b]), int(batch.text_lengths[b])
                maps.append(alignments[b, :t, :n])
                names.append(names_all[indices[order[b]]])
            if inference:
                free = model.inference(batch.text, batch.text_lengths)
                free_steps = torch.div(free.mel_lengths + r - 1, r, rounding_mode="floor")
                free_alignments = free.alignments.float().cpu().numpy()  # (B, steps, N)
                for b in range(free_alignments.shape[0]):
                    t = min(max(int(free_steps[b]), 1), free_alignments.shape[1])
                    free_maps.append(free_alignments[b, :t, : int(batch.text_lengths[b])])
                    free_names.append(names_all[indices[order[b]]])
                    hit_max.append(bool(free.hit_max_steps[b]))
    A, text_lengths, decoder_lengths = pack_alignments(maps)
    free_out = None
    if inference:
        FA, ftl, fdl = pack_alignments(free_maps)
        free_out = {"alignments": FA, "text_lengths": ftl, "decoder_lengths": fdl,
                    "hit_max_steps": hit_max, "names": free_names}
    return {"kind": "checkpoint", "alignments": A, "text_lengths": text_lengths,
            "decoder_lengths": decoder_lengths, "names": names,
            "step": int(ckpt.get("iteration", 0)), "seconds_per_step": step_seconds(hp),
            "free": free_out, "path": resolved, "hp": hp, "filelist": filelist,
            "device": str(device)}


def _match_items(items: List[Any], batch: Any) -> List[int]:
    """For each row of the collated batch, the index of its item in `items`."""
    import torch

    used: set = set()
    order = []
    for b in range(batch.text.size(0)):
        n = int(batch.text_lengths[b])
        m = int(batch.mel_lengths[b])
        text = batch.text[b, :n].cpu()
        for i, (ids, mel) in enumerate(items):
            if (i not in used and len(ids) == n and mel.size(-1) == m
                    and torch.equal(ids.cpu(), text)):
                used.add(i)
                order.append(i)
                break
        else:
            raise DiagnosticsError("cannot match a collated batch row to its utterance")
    return order


def guided_term_for(source: Dict[str, Any], hp: HParams) -> float:
    """weight(step) x guided-attention loss of the source's teacher-forced maps.

    Uses `loss_function.guided_attention_weight` and `guided_attention_loss` (one implementation).
    """
    import torch
    from loss_function import guided_attention_loss, guided_attention_weight

    weight = guided_attention_weight(int(source["step"]), hp)
    loss = guided_attention_loss(torch.as_tensor(np.asarray(source["alignments"],
                                                            dtype=np.float32)),
                                 torch.as_tensor(source["text_lengths"]),
                                 torch.as_tensor(source["decoder_lengths"]), hp.guide_sigma)
    return float(weight) * float(loss)


# ============================================================================ analysis
def _select_source(step: Optional[int], checkpoint: Optional[str], alignment_path: Optional[str],
                   run_dir: str, device: Optional[str], filelist: Optional[str], inference: bool,
                   batch_size: Optional[int], notes: List[Tuple[str, Dict[str, Any]]]
                   ) -> Tuple[Dict[str, Any], Optional[str]]:
    """(source dict, run folder or None) for the arguments of `analyze_current_alignment`."""
    if checkpoint is not None and alignment_path is not None:
        raise DiagnosticsError("give either a checkpoint or an alignment file, not both")
    if checkpoint is not None:
        if step is not None:
            raise DiagnosticsError("--step and --checkpoint name two sources; give one")
        if not os.path.exists(checkpoint) and os.path.basename(checkpoint) != "checkpoint_LATEST":
            raise DiagnosticsError(f"{checkpoint}: no such checkpoint")
        source = evaluate_checkpoint(checkpoint, device, filelist, inference, batch_size)
        return source, os.path.dirname(os.path.abspath(source["path"]))
    if alignment_path is not None:
        source = load_alignment_file(alignment_path)
        if step is not None:
            source["step"] = int(step)
        source["path"] = alignment_path
        folder = os.path.dirname(os.path.abspath(alignment_path))
        run = os.path.dirname(folder) if os.path.basename(folder) == "alignments" else None
        return source, run

    checkpoints, snapshots = list_run_steps(run_dir)
    if step is None:
        if not checkpoints and not snapshots:
            raise DiagnosticsError(
                f"{run_dir}: no checkpoints or alignment snapshots yet; train first: "
                f"{TRAIN_COMMAND} (a snapshot is written every iters_per_validation steps)")
        step = max(set(checkpoints) | set(snapshots))
    if step in checkpoints:
        try:
            source = evaluate_checkpoint(checkpoints[step], device, filelist, inference,
                                         batch_size)
            return source, run_dir
        except DiagnosticsError as err:
            if step not in snapshots:
                raise
            notes.append(("note_fallback", {"path": checkpoints[step], "error": str(err),
                                            "snapshot": snapshots[step]}))
    if step in snapshots:
        source = load_alignment_file(snapshots[step])
        source["path"] = snapshots[step]
        if source["step"] is None:
            source["step"] = step
        return source, run_dir
    available = sorted(set(checkpoints) | set(snapshots))
    if not available:
        raise DiagnosticsError(f"{run_dir}: no checkpoints or alignment snapshots; train first: "
                               f"{TRAIN_COMMAND}")
    raise DiagnosticsError(f"{run_dir}: no checkpoint_{step} or alignments/step_{step}.npz; "
                           f"available steps: {', '.join(str(s) for s in available)}")


def _representative(summary: Dict[str, Any]) -> int:
    """The item of median diagonal_score (the lower median): what a typical map looks like."""
    scores = [item["diagonal_score"] for item in summary["per_item"]]
    return int(np.argsort(scores, kind="stable")[(len(scores) - 1) // 2])


def recommendations(result: Dict[str, Any], hp: HParams, lang: str = "en") -> List[Dict[str, str]]:
    """Concrete next steps tied to the findings of `result` (see `analyze_current_alignment`)."""
    recs: List[Dict[str, str]] = []

    def add(rec_id: str, **fields: Any) -> None:
        if all(r["id"] != rec_id for r in recs):
            recs.append({"id": rec_id, "message": _msg(lang, f"rec_{rec_id}", **fields)})

    data = {"train": hp.training_files, "val": hp.validation_files}
    step, n = result["step"], max(1, result["n_items"])
    counts = result["failure_counts"]
    flag_ids = {f["id"] for f in result["red_flags"]}
    criterion = result["criterion"]
    failing = criterion is not None and not criterion["passed"]
    share = {m: counts.get(m, 0) / n for m in FAILURE_MODES}
    band_or_diffuse = share["horizontal_band"] >= 0.25 or share["diffuse"] >= 0.5

    if step is None:
        add("no_step")
    if 2 in flag_ids:
        add("guidance_off", weight=hp.guide_loss_weight, start=hp.guide_decay_start,
            current=result.get("guided_weight") if result.get("guided_weight") is not None
            else float("nan"))
    if flag_ids or failing:
        add("check_data", **data)
    if share["skipping"] >= 0.25 or share["collapse_to_end"] >= 0.25:
        add("data_mismatch", **data)
    if share["stuck"] >= 0.25 and not hp.trim_silence:
        add("trim_silence", seconds=STUCK_SECONDS)
    if flag_ids & {1, 3, 4} or failing or (band_or_diffuse and criterion is not None):
        if hp.guide_loss_weight < hp.remedy_guide_loss_weight:
            add("guide_weight", weight=hp.guide_loss_weight)
        if not hp.curriculum:
            add("curriculum")
    if flag_ids or failing:
        add("warm_start")
    free = result.get("free_running")
    if free and free.get("hit_max_steps"):
        add("gate", k=len(free["hit_max_steps"]))
    if step is not None and not flag_ids and not failing:
        first = next_milestone(-1, hp)
        if criterion is None and first is not None:
            add("too_early", step=first["step"], threshold=first["threshold"])
        else:
            add("keep_waiting", next=step + hp.iters_per_validation)
    return recs


def analyze_current_alignment(step: Optional[int] = None, checkpoint: Optional[str] = None,
                              alignment_path: Optional[str] = None,
                              output_directory: str = "output", run_name: str = "trial_0",
                              device: Optional[str] = None, plot: bool = True,
                              plot_path: Optional[str] = None, filelist: Optional[str] = None,
                              inference: bool = False, batch_size: Optional[int] = None,
                              lang: str = "en") -> Dict[str, Any]:
    """Analyses the attention of one step of a run, a checkpoint or an attention file.

    Sources: `checkpoint` (a file or `.../checkpoint_LATEST`: the model runs on the validation
    filelist); `alignment_path` (a (T, N) .npy or an `alignments/step_N.npz`); `step` (the run's
    checkpoint_<step> if it exists, else its alignments/step_<step>.npz); none of them: the newest
    checkpoint or snapshot of `output_directory/run_name`. An attention map is never simulated.

    Args:
        plot: write the PNG (`plot_path`, else `<run>/diagnostics/step_<N>.png`, else next to
            the attention file).
        filelist, inference, batch_size, device: for a checkpoint (see `evaluate_checkpoint`).
        lang: "en" or "ru" for the messages in the result.

    Returns:
        dict: "step", "source", "n_items", "diagnostics" (mean metrics, incl. diagonal_score),
        "failure_counts", "problems" ({mode: items} of the modes found), "criterion",
        "next_milestone", "red_flags", "guided_term", "recommendations", "plot_path", "items"
        (per utterance), "free_running", "hparams_source", "notes".

    Raises:
        DiagnosticsError: bad input (missing, corrupt or foreign file; malformed matrix; no
            run data).
    """
    if lang not in MESSAGES:
        raise DiagnosticsError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    notes: List[Tuple[str, Dict[str, Any]]] = []
    run_dir = _run_dir(output_directory, run_name)
    source, run = _select_source(step, checkpoint, alignment_path, run_dir, device, filelist,
                                 inference, batch_size, notes)
    if "hp" in source:
        hp, hp_source = source["hp"], "checkpoint"
    else:
        hp, hp_source, problem = load_run_hparams(run)
        if problem:
            notes.append(("note_hparams_bad", problem))
    seconds = source["seconds_per_step"] or step_seconds(hp)
    summary = batch_metrics(source["alignments"], source["text_lengths"],
                            source["decoder_lengths"], seconds_per_step=seconds,
                            band=hp.diagonal_band)
    step = source["step"]
    mean = summary["mean"]

    guided_term, guided_from, guided_weight = None, None, None
    records = _log_records(run, step)
    record = next((r for r in reversed(records) if r["step"] == step), None)
    if any(r.get("remediated") for r in records):
        # The trainer already raised the guided weight and turned curriculum on (guardrails):
        # recommend what comes next, not the remedy it applied.
        from guardrails import remediated_hparams

        hp = remediated_hparams(hp)
        notes.append(("note_remediated", {"weight": hp.guide_loss_weight}))
    if record is not None and record.get("guided_term") is not None:
        guided_term, guided_from = float(record["guided_term"]), "log"
        guided_weight = record.get("guided_weight")
    elif step is not None and source["kind"] != "matrix":
        try:
            guided_term, guided_from = guided_term_for(source, hp), "computed"
            from loss_function import guided_attention_weight
            guided_weight = float(guided_attention_weight(step, hp))
        except ImportError as err:
            notes.append(("note_guided_unavailable", {"error": _first_line(err)}))

    flags = red_flags(step, summary, guided_term, hp, lang) if step is not None else []
    criterion = (criterion_for_step(step, hp, mean["diagonal_score"]) if step is not None
                 else None)
    free = None
    if source.get("free") is not None:
        f = source["free"]
        free_summary = batch_metrics(f["alignments"], f["text_lengths"], f["decoder_lengths"],
                                     seconds_per_step=seconds, band=hp.diagonal_band)
        hit = [name for name, h in zip(f["names"], f["hit_max_steps"] or []) if h]
        free = {"n_items": free_summary["n_items"], "diagnostics": free_summary["mean"],
                "failure_counts": free_summary["failure_counts"], "hit_max_steps": hit,
                "max_decoder_steps": hp.max_decoder_steps}

    items = [{"name": name, **metrics, "failure_modes": modes}
             for name, metrics, modes in zip(source["names"], summary["per_item"],
                                             summary["failure_modes"])]
    counts = summary["failure_counts"]
    result: Dict[str, Any] = {
        "step": step,
        "source": {"kind": source["kind"], "path": source.get("path"),
                   "filelist": source.get("filelist"), "device": source.get("device")},
        "n_items": summary["n_items"],
        "diagnostics": mean,
        "failure_counts": counts,
        "problems": {m: counts[m] for m in FAILURE_MODES if counts[m]},
        "criterion": criterion,
        "next_milestone": next_milestone(step, hp) if step is not None else None,
        "red_flags": flags,
        "red_flag_start_step": hp.red_flag_start_step,
        "guided_term": guided_term,
        "guided_term_source": guided_from,
        "guided_weight": guided_weight,
        "items": items,
        "free_running": free,
        "hparams_source": hp_source,
        "plot_path": None,
        "lang": lang,
    }
    result["recommendations"] = recommendations(result, hp, lang)
    if plot:
        path = plot_path or _default_plot_path(source, run, step)
        result["plot_path"] = save_report_plot(source, summary, hp, step, path, lang)
    result["notes"] = [_msg(lang, key, **fields) for key, fields in notes]
    return result


def _default_plot_path(source: Dict[str, Any], run: Optional[str], step: Optional[int]) -> str:
    name = f"step_{step}.png" if step is not None else "alignment.png"
    if run is not None:
        return os.path.join(run, "diagnostics", name)
    stem = os.path.splitext(source["path"])[0]
    return f"{stem}_diagnostics.png"


# ============================================================================ report
def _label(text: str, name: str) -> str:
    """"focus (focus_score)": the words, then the name that JSON and the logs use."""
    return text if text == name else f"{text} ({name})"


def format_report(result: Dict[str, Any], lang: Optional[str] = None) -> str:
    """The human-readable report of an `analyze_current_alignment` result."""
    lang = lang or result.get("lang", "en")
    M = lambda key, **fields: _msg(lang, key, **fields)  # noqa: E731 - local shorthand
    step = result["step"]
    src = result["source"]
    lines = [M("title", step=step) if step is not None else M("title_nostep")]
    if src["kind"] == "checkpoint":
        lines.append(M("source_checkpoint", path=src["path"], filelist=src["filelist"],
                       device=src["device"]))
    else:
        lines.append(M(f"source_{src['kind']}", path=src["path"]))
    lines.append(M("n_items", n=result["n_items"]) + "; " + M(
        "hparams_from", where=M(f"hp_{result['hparams_source']}")))
    lines += ["", M("metrics_header")]
    for name in METRIC_NAMES:
        value = result["diagnostics"][name]
        shown = f"{value:.3f}" + (f"  ({value:.1%})" if name == "diagonal_score" else "")
        lines.append(f"  {_label(M('m_' + name), name):<44} {shown}")
    if result["guided_term"] is not None:
        where = M("guided_from_log" if result["guided_term_source"] == "log" else "guided_computed")
        lines.append("  " + M("guided_term", value=result["guided_term"], where=where))

    lines += ["", M("modes_header")]
    n = result["n_items"]
    for mode in (HEALTHY,) + FAILURE_MODES:
        count = result["failure_counts"].get(mode, 0)
        if count or mode == HEALTHY:
            lines.append(f"  {_label(M('mode_' + mode), mode):<44} {count}/{n}")

    lines += ["", M("criterion_header")]
    criterion = result["criterion"]
    if step is None:
        lines.append("  " + M("no_step"))
    elif criterion is None:
        first = result["next_milestone"]
        if first is not None:
            lines.append("  " + M("before_first", step=first["step"], threshold=first["threshold"]))
    else:
        verdict = M("pass" if criterion["passed"] else "fail")
        lines.append("  " + M("criterion_line", step=criterion["step"],
                              threshold=criterion["threshold"], value=criterion["value"],
                              verdict=verdict))
        nxt = result["next_milestone"]
        lines.append("  " + (M("next_milestone", step=nxt["step"], threshold=nxt["threshold"])
                             if nxt else M("last_milestone")))

    lines += ["", M("flags_header")]
    if step is None:
        lines.append("  " + M("flags_no_step"))
    elif step < result["red_flag_start_step"]:
        lines.append("  " + M("flags_not_yet", start=result["red_flag_start_step"]))
    elif not result["red_flags"]:
        lines.append("  " + M("flags_none"))
    for flag in result["red_flags"]:
        lines.append("  " + M("flag_line", **flag))

    free = result.get("free_running")
    if free:
        lines += ["", M("free_header", n=free["n_items"])]
        for name in ("diagonal_score", "focus_score", "coverage"):
            lines.append(f"  {_label(M('m_' + name), name):<44} {free['diagnostics'][name]:.3f}")
        if free["hit_max_steps"]:
            lines.append("  " + M("free_hit_max", k=len(free["hit_max_steps"]), n=free["n_items"],
                                  names=", ".join(free["hit_max_steps"][:8])))

    lines += ["", M("recs_header")]
    lines += [f"  - {rec['message']}" for rec in result["recommendations"]]
    if result.get("notes"):
        lines += ["", M("notes_header")] + [f"  - {note}" for note in result["notes"]]
    if result.get("plot_path"):
        lines += ["", M("plot_line", path=result["plot_path"])]
    return "\n".join(lines)


# ============================================================================ pictures
def _new_figure(width: float, height: float) -> Tuple[Any, Any]:
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, FigureCanvasAgg(fig)


def _draw_alignment(ax: Any, A: np.ndarray, band: float, title: Optional[str],
                    lang: str = "en") -> Any:
    """Attention map (x = decoder step, y = token, NVIDIA's orientation), diagonal band, argmax."""
    T, N = A.shape
    image = ax.imshow(A.T, aspect="auto", origin="lower", interpolation="none", cmap="viridis",
                      extent=(-0.5, T - 0.5, -0.5, N - 0.5), vmin=0.0,
                      vmax=max(float(A.max()), 1e-6))
    x = np.array([-0.5, T - 0.5])
    centre = (x + 0.5) / T * N - 0.5  # token index of the ideal diagonal at step x
    for sign in (-1, 1):
        ax.plot(x, centre + sign * band * N, color="white", linestyle="--", linewidth=1.0,
                label=_msg(lang, "plot_band") if sign < 0 else None)
    ax.plot(np.arange(T), A.argmax(axis=1), color="red", linewidth=0.8, alpha=0.8,
            label=_msg(lang, "plot_path"))
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.5, N - 0.5)
    ax.set_xlabel(_msg(lang, "plot_decoder"))
    ax.set_ylabel(_msg(lang, "plot_token"))
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.5)
    return image


def plot_alignment_to_numpy(A: Any, title: Optional[str] = None,
                            band: float = DEFAULT_BAND) -> np.ndarray:
    """An attention map as an RGB image (for TensorBoard), with the diagonal band and argmax path.

    Args:
        A: (T, N) attention of one utterance, un-padded, rows = decoder steps.
        title: optional title.
        band: b of diagonal_score (the dashed lines).

    Returns:
        uint8 (H, W, 3).
    """
    A = _to_numpy(A, np.float64)
    if A.ndim != 2 or A.size == 0:
        raise DiagnosticsError(f"an attention map must be a non-empty (T, N) matrix; got shape "
                               f"{A.shape}")
    fig, canvas = _new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    image = _draw_alignment(ax, A, band, title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # (H, W, 4) -> (H, W, 3)


def save_report_plot(source: Dict[str, Any], summary: Dict[str, Any], hp: HParams,
                     step: Optional[int], path: str, lang: str = "en") -> str:
    """PNG: the representative item's map, its per-step focus, the per-item diagonality."""
    i = _representative(summary)
    t, n = int(source["decoder_lengths"][i]), int(source["text_lengths"][i])
    A = np.asarray(source["alignments"][i, :t, :n], dtype=np.float64)
    item = summary["per_item"][i]
    modes = ", ".join(_msg(lang, "mode_" + m) for m in summary["failure_modes"][i])
    title = _msg(lang, "plot_title", step=step if step is not None else "?",
                 name=source["names"][i], diagonal=item["diagonal_score"], modes=modes)

    fig, canvas = _new_figure(9, 9)
    grid = fig.add_gridspec(3, 2, height_ratios=[3, 1, 1.2], width_ratios=[40, 1])
    ax_map = fig.add_subplot(grid[0, 0])
    image = _draw_alignment(ax_map, A, hp.diagonal_band, title, lang)
    fig.colorbar(image, cax=fig.add_subplot(grid[0, 1]))

    ax_focus = fig.add_subplot(grid[1, 0], sharex=ax_map)
    ax_focus.plot(np.arange(t), A.max(axis=1), color="tab:blue", linewidth=1.0)
    ax_focus.axhline(BAND_MIN_FOCUS, color="gray", linestyle=":", linewidth=0.8)
    ax_focus.set_ylim(0, 1.05)
    ax_focus.set_ylabel(_msg(lang, "plot_focus"))
    ax_focus.set_xlabel(_msg(lang, "plot_decoder"))

    ax_items = fig.add_subplot(grid[2, 0])
    scores = np.sort([it["diagonal_score"] for it in summary["per_item"]])
    colors = ["tab:green" if s >= 0.5 else "tab:orange" if s >= 0.1 else "tab:red" for s in scores]
    ax_items.bar(np.arange(len(scores)), scores, color=colors, width=0.9)
    criterion = criterion_for_step(step, hp) if step is not None else None
    if criterion is not None:
        ax_items.axhline(criterion["threshold"], color="black", linestyle="--", linewidth=0.8)
    ax_items.set_ylim(0, 1.0)
    ax_items.set_ylabel(_msg(lang, "m_diagonal_score"))
    ax_items.set_title(_msg(lang, "plot_items"), fontsize=9)
    fig.tight_layout()
    _save_figure(canvas, path)
    return path


def _save_figure(canvas: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        canvas.print_png(path)
    except OSError as err:
        raise DiagnosticsError(f"{path}: cannot write the plot ({_first_line(err)})") from None


def history(output_directory: str = "output", run_name: str = "trial_0",
            plot_path: Optional[str] = None, lang: str = "en") -> Dict[str, Any]:
    """Diagonality over a run from its diagnostics.jsonl: a table and a PNG.

    Returns:
        {"rows": [{"step", "diagonal_score", "focus_score", "coverage", "guided_term",
        "criterion", "red_flags"}], "plot_path": str, "table": str}.
    """
    run_dir = _run_dir(output_directory, run_name)
    log_path = os.path.join(run_dir, "diagnostics.jsonl")
    if not os.path.isfile(log_path):
        raise DiagnosticsError(f"{log_path}: no such file; training writes it at every "
                               f"validation ({TRAIN_COMMAND})")
    records = read_diagnostics_log(log_path)
    if not records:
        raise DiagnosticsError(f"{log_path}: no validation records yet")
    hp, _, _ = load_run_hparams(run_dir)
    rows = []
    for record in sorted(records, key=lambda r: r["step"]):
        metrics = record.get("metrics") or {}
        if "diagonal_score" not in metrics:
            raise DiagnosticsError(f"{log_path}: the record of step {record['step']} has no "
                                   f"metrics.diagonal_score")
        free = record.get("free_running") or {}
        rows.append({"step": record["step"], "diagonal_score": float(metrics["diagonal_score"]),
                     "focus_score": metrics.get("focus_score"),
                     "coverage": metrics.get("coverage"), "guided_term": record.get("guided_term"),
                     "criterion": record.get("criterion"),
                     "red_flags": [f.get("id") for f in record.get("red_flags") or []],
                     "free_diagonal_score": free.get("diagonal_score")})

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    lines = [_msg(lang, "history_header", path=log_path), _msg(lang, "history_columns")]
    for row in rows:
        crit = row["criterion"]
        crit_text = (f">{crit['threshold']:.2f} " + _msg(lang, "pass" if crit["passed"] else "fail")
                     if crit else "-")
        flags = ",".join(str(i) for i in row["red_flags"]) or "-"
        lines.append(f"{row['step']:<8} {row['diagonal_score']:.3f}  "
                     f"{fmt(row['focus_score'], '.3f'):<6} {fmt(row['coverage'], '.3f'):<6} "
                     f"{fmt(row['guided_term'], '.4f'):<8} {crit_text:<14} {flags}")

    path = plot_path or os.path.join(run_dir, "diagnostics", "history.png")
    fig, canvas = _new_figure(9, 5)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.array([r["step"] for r in rows])
    ax.plot(steps, [r["diagonal_score"] for r in rows], marker="o", markersize=3,
            label=_msg(lang, "plot_teacher"))
    free_rows = [r for r in rows if r["free_diagonal_score"] is not None]
    if free_rows:
        ax.plot([r["step"] for r in free_rows], [r["free_diagonal_score"] for r in free_rows],
                marker=".", linestyle=":", label=_msg(lang, "plot_free"))
    last = max(int(steps.max()), max(hp.success_steps, default=0)) * 1.05
    if hp.success_steps:  # each threshold holds from its milestone to the next
        ax.step(list(hp.success_steps) + [last],
                list(hp.success_thresholds) + [hp.success_thresholds[-1]], where="post",
                color="green", linestyle="--", label=_msg(lang, "plot_criteria"))
    ax.hlines(hp.red_flag_diagonal, hp.red_flag_start_step, last, color="red", linestyle=":",
              label=_msg(lang, "plot_red_flag"))
    flagged = [r for r in rows if r["red_flags"]]
    if flagged:
        ax.scatter([r["step"] for r in flagged], [r["diagonal_score"] for r in flagged],
                   color="red", zorder=3, label=_msg(lang, "plot_flagged"))
    ax.set_ylim(0, 1.0)
    ax.set_xlim(0, last)
    ax.set_xlabel(_msg(lang, "plot_history_step"))
    ax.set_ylabel(_msg(lang, "m_diagonal_score"))
    ax.set_title(_msg(lang, "plot_history_title"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save_figure(canvas, path)
    lines.append(_msg(lang, "history_plot", path=path))
    return {"rows": rows, "plot_path": path, "table": "\n".join(lines)}


# ============================================================================ CLI
def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Alignment diagnostics of a Tacotron 2 run: metrics, failure modes, success "
                    "criteria, red flags, recommendations and plots.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint file or .../checkpoint_LATEST: the "
                        "model runs teacher-forced on the validation filelist")
    source.add_argument("--alignment", help="a (decoder steps, tokens) .npy matrix or an "
                        "alignments/step_N.npz snapshot")
    source.add_argument("--history", action="store_true",
                        help="diagonality over the run from diagnostics.jsonl (table and PNG)")
    parser.add_argument("--step", type=int, help="step of the run: its checkpoint_N, else its "
                        "alignments/step_N.npz (with --alignment: the step of a .npy)")
    parser.add_argument("--output_directory", default="output")
    parser.add_argument("--run_name", default="trial_0")
    parser.add_argument("--filelist", help="with --checkpoint: instead of the hparams' "
                        "validation_files")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--batch_size", type=int, help="with --checkpoint (default: hparams)")
    parser.add_argument("--inference", action="store_true",
                        help="with --checkpoint: also decode each item from its text alone")
    parser.add_argument("--plot", help="where to write the PNG")
    parser.add_argument("--no-plot", dest="no_plot", action="store_true", help="write no PNG")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="report language")
    parser.add_argument("--fail-on-red-flag", dest="fail_on_red_flag", action="store_true",
                        help="exit with status 3 when a red flag is up")
    return parser.parse_args(argv)


def _print(text: str) -> None:
    """print, quiet when the reader went away (`... | head`)."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (0 report, 2 bad input, 3 red flag)."""
    try:
        args = _parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        return int(stop.code or 0)
    try:
        if args.history:
            out = history(args.output_directory, args.run_name, args.plot, args.lang)
            _print(json.dumps({"rows": out["rows"], "plot_path": out["plot_path"]}, indent=2)
                   if args.json else out["table"])
            return 0
        result = analyze_current_alignment(
            step=args.step, checkpoint=args.checkpoint, alignment_path=args.alignment,
            output_directory=args.output_directory, run_name=args.run_name, device=args.device,
            plot=not args.no_plot, plot_path=args.plot, filelist=args.filelist,
            inference=args.inference, batch_size=args.batch_size, lang=args.lang)
    except DiagnosticsError as err:
        print(f"alignment_diagnostics: error: {err}", file=sys.stderr)
        return 2
    _print(json.dumps(result, indent=2, ensure_ascii=False) if args.json
           else format_report(result, args.lang))
    if args.fail_on_red_flag and result["red_flags"]:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
