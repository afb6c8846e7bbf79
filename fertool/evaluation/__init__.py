"""Evaluation: batched inference, the paper's TTA (docs/protocol.md §5), metrics and reports."""

from .inference import predict_probs
from .tta import View, apply_view, tta_divisor, tta_plan

__all__ = ["predict_probs", "View", "apply_view", "tta_plan", "tta_divisor"]
