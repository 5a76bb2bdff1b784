"""What watches a run and persists it; callbacks never change the math."""

from callbacks.checkpoint_io import AtomicCheckpointIO
from callbacks.hf_export import HuggingFaceExport
from callbacks.preemption import Preempted, Preemption
from callbacks.progress import StepProgressBar

__all__ = ["AtomicCheckpointIO", "HuggingFaceExport", "Preempted", "Preemption", "StepProgressBar"]
