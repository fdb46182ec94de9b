"""What the trainer does with its own attention scores: milestones, red flags, remediation.

The scores themselves come from `alignment_diagnostics` (one implementation); this module only
decides. `AlignmentGuard` is plain state that a checkpoint carries (`state_dict`), so a resumed run
knows whether it already remediated.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional

from alignment_diagnostics import criterion_for_step, red_flags
from hparams import HParams

REMEDIES = ("check the data: python check_data.py {train} {val} (text-audio pairs, silence, "
            "sample rates)",
            "raise the guided-attention weight: --hparams=guide_loss_weight=5.0",
            "turn curriculum learning on: --hparams=curriculum=true (short texts first)")


class GuardDecision(NamedTuple):
    action: str  # continue | warn | remediate | stop
    flags: List[Dict[str, Any]]
    message: str


def remedies_text(hp: HParams) -> str:
    return "; ".join(r.format(train=hp.training_files, val=hp.validation_files) for r in REMEDIES)


class AlignmentGuard:
    """Milestones and red flags of one run, with `hp.red_flag_action` applied."""

    def __init__(self, hp: HParams, state: Optional[Dict[str, Any]] = None):
        state = state or {}
        self.remediated_at: Optional[int] = state.get("remediated_at")
        self.milestones_done: List[int] = list(state.get("milestones_done", []))

    def state_dict(self) -> Dict[str, Any]:
        return {"remediated_at": self.remediated_at, "milestones_done": list(self.milestones_done)}

    def milestone(self, step: int, diagonal: float, hp: HParams) -> Optional[Dict[str, Any]]:
        """The success criterion reached for the first time at this validation, judged."""
        criterion = criterion_for_step(step, hp)
        if criterion is None or criterion["step"] in self.milestones_done:
            return None
        self.milestones_done.append(criterion["step"])
        passed = diagonal > criterion["threshold"]
        return {"step": criterion["step"], "threshold": criterion["threshold"],
                "value": float(diagonal), "passed": bool(passed),
                "line": (f"criterion step {criterion['step']}: diagonality {diagonal:.2f} "
                         f"{'>' if passed else '<='} {criterion['threshold']:.2f} "
                         f"{'PASS' if passed else 'FAIL'}")}

    def check(self, step: int, summary: Dict[str, Any], guided_term: float,
              hp: HParams) -> GuardDecision:
        """Red flags of this validation and what to do about them.

        Args:
            summary: `alignment_diagnostics.batch_metrics` output of the validation set.
            guided_term: guided weight x guided loss, as it entered the total.
        """
        flags = red_flags(step, summary, guided_term, hp)
        if not flags:
            return GuardDecision("continue", [], "")
        names = ", ".join(f"red flag {f['id']} ({f['name']}): {f['message']}" for f in flags)
        action = hp.red_flag_action
        if action == "warn":
            return GuardDecision("warn", flags, f"step {step}: {names}")
        if action == "remediate" and self.remediated_at is None:
            self.remediated_at = step
            return GuardDecision(
                "remediate", flags,
                f"step {step}: {names}. Remediation: guide_loss_weight "
                f"{hp.guide_loss_weight} -> {hp.remedy_guide_loss_weight}, curriculum on; "
                f"training stops if a red flag is still up {hp.red_flag_patience} steps from now")
        if action == "remediate" and step - self.remediated_at < hp.red_flag_patience:
            return GuardDecision("warn", flags,
                                 f"step {step}: {names} (remediated at step {self.remediated_at}, "
                                 f"waiting until step {self.remediated_at + hp.red_flag_patience})")
        why = (f"still up {step - self.remediated_at} steps after remediation at step "
               f"{self.remediated_at}" if self.remediated_at is not None else "red_flag_action=stop")
        return GuardDecision("stop", flags,
                             f"step {step}: {names}; {why}. Stopping. Remedies: {remedies_text(hp)}")


def remediated_hparams(hp: HParams) -> HParams:
    """The hparams after remediation: stronger guidance and curriculum learning."""
    return hp.replace(guide_loss_weight=hp.remedy_guide_loss_weight, curriculum=True)
