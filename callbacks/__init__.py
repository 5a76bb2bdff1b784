"""What watches a run and persists it; callbacks never change the math."""

from callbacks.hf_export import HuggingFaceExport
from callbacks.progress import StepProgressBar

__all__ = ["HuggingFaceExport", "StepProgressBar"]
