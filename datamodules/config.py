"""Typed configuration of what feeds the models: where questions come from and how they become batches.

Every knob has a type, a default and a docstring; a bad value fails in :meth:`DataConfig.validate`
with one sentence naming the key.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from datamodules.answers import ANSWER_CHECKERS, ANSWER_STYLES
from datamodules.synthetic import SyntheticConfig


class ConfigError(ValueError):
    """An impossible configuration value; the message is one sentence naming the key."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class DataConfig:
    """Where questions come from and how they become batches."""

    path: str = "synthetic"
    """Training data: 'synthetic' (embedded generator), a local GSM8K .jsonl / ReFT or SVAMP .json file, or a hub name (openai/gsm8k)."""
    val_path: str | None = None
    """Validation data; by default the generator's validation split, or val_size questions held out from path."""
    test_path: str | None = None
    """Test data for the final evaluation; by default the generator's test split, else none."""
    hub_config: str | None = None
    """Config name of a hub data set (openai/gsm8k needs 'main')."""
    format: str = "auto"
    """File format: auto (from the fields), gsm8k, reft or svamp."""
    on_error: str = "raise"
    """A malformed data row stops the run ('raise') or is skipped and counted ('skip')."""
    keep_calculator_notes: bool = False
    """Keep GSM8K's <<a*b=c>> calculator notes in the chain of thought (ReFT removes them)."""
    prompt_style: str = "reft"
    """'reft': 'Question:\\n...\\nAnswer reasoning:\\n' (ReFT/CARFT); 'chat': the tokenizer's chat template."""
    answer_style: str = "reft"
    """How answers are read (docs/METHODS.md section 0.2): 'reft' (the papers' format: "Therefore, the answer is", "####",
    \\boxed{}) or 'lenient' (also "The answer is" / "Answer:" and then the last number, for a model not trained on that format)."""
    answer_checker: str = "rule"
    """Whether an answer is right: 'rule' (the extracted number within 0.01 of the gold one, CARFT's rule) or 'math_verify'
    (Hugging Face's math-verify on the whole response, for LaTeX and \\boxed{} answers; pip install math-verify)."""
    val_size: int = 200
    """Questions held out from path for validation when no val_path is given."""
    max_val_examples: int = 200
    """Validation questions used at each validation (greedy decoding is the cost)."""
    max_prompt_tokens: int = 256
    """Longer prompts stop the run, or are dropped or truncated (see overlong)."""
    max_target_tokens: int = 256
    """Longer annotated targets stop the run, or are dropped or truncated (see overlong)."""
    overlong: str = "error"
    """An over-long prompt or target: 'error' stops the run naming the row (with on_error skip: skipped and
    counted); 'drop' or 'truncate' (prompts keep their end) it, with a logged count (ReFT drops them)."""
    batch_size: int = 32
    """Questions per training batch on each device."""
    bucket_batches: int = 8
    """Sort each run of this many batches by length before batching (less padding); 1 turns it off."""
    eval_batch_size: int = 100
    """Questions per generation batch at validation and test."""
    num_workers: int = 0
    """DataLoader workers; tokenisation is done once up front, so 0 is usually enough."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Knobs of the embedded data generator."""

    def validate(self) -> None:
        require(self.format in ("auto", "gsm8k", "reft", "svamp"), f"data.format must be auto, gsm8k, reft or svamp, got {self.format!r}")
        require(self.on_error in ("raise", "skip"), f"data.on_error must be raise or skip, got {self.on_error!r}")
        require(self.prompt_style in ("reft", "chat"), f"data.prompt_style must be reft or chat, got {self.prompt_style!r}")
        require(self.answer_style in ANSWER_STYLES, f"data.answer_style must be reft or lenient, got {self.answer_style!r}")
        require(self.answer_checker in ANSWER_CHECKERS, f"data.answer_checker must be rule or math_verify, got {self.answer_checker!r}")
        require(self.answer_checker != "math_verify" or importlib.util.find_spec("math_verify") is not None,
                "data.answer_checker math_verify needs the math-verify package: pip install math-verify")
        require(self.overlong in ("error", "drop", "truncate"), f"data.overlong must be error, drop or truncate, got {self.overlong!r}")
        for name in ("val_size", "max_val_examples", "max_prompt_tokens", "max_target_tokens", "batch_size", "eval_batch_size", "bucket_batches"):
            require(getattr(self, name) > 0, f"data.{name} must be positive, got {getattr(self, name)}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
