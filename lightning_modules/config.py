"""Typed configuration of a run.

Every knob has a type, a default and a docstring saying where the default comes from.
The method's own knobs live in its ``Config`` dataclass under ``algo``; everything else is
shared. ``configs/<method>.yaml`` holds the values of the embedded default run; a real
model's values (from the papers) are in ``configs/real/``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from datamodules.config import ConfigError, DataConfig, require  # noqa: F401  (re-exported: the run's config is built here)

SAMPLERS = ("static_cache", "compiled", "hf_generate")


@dataclass
class EmbeddedModelConfig:
    """Shape of the tiny Llama built from scratch when ``model.name_or_path`` is ``embedded``."""

    hidden_size: int = 96
    """Width. About 0.4M parameters in all: near compute-optimal for the ~5 CPU-minutes of the warm-up."""
    num_layers: int = 3
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (head dim = hidden_size / num_heads)."""
    intermediate_size: int = 384
    """MLP width (4x hidden)."""
    vocab_size: int = 512
    """Byte-level BPE vocabulary (256 bytes + merges + special tokens), digits kept single."""
    max_positions: int = 512
    """Context length."""
    init_seed: int = 0
    """Seed of the random initial weights (fixed, so every run starts from the same model)."""

    def validate(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            require(getattr(self, name) > 0, f"model.embedded.{name} must be positive, got {getattr(self, name)}")
        require(
            self.hidden_size % self.num_heads == 0,
            f"model.embedded.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})",
        )
        require(self.vocab_size >= 300, f"model.embedded.vocab_size must be at least 300 (bytes + specials), got {self.vocab_size}")


@dataclass
class LoraConfig:
    """LoRA adapters (Hu et al. 2021) through ``peft``: the base weights stay frozen, low-rank updates train."""

    r: int = 0
    """Rank of every adapter; 0 trains the full model (no LoRA)."""
    alpha: int | None = None
    """Scale numerator: the update is (alpha / r) B A; null means 2 * r, the common rule of thumb."""
    dropout: float = 0.0
    """Dropout on the adapters' input (QLoRA: 0.05); 0 keeps the RL methods' first update at ratio 1, since rollouts are scored without dropout."""
    target_modules: str = "all-linear"
    """Comma-separated module names (q_proj,v_proj) or all-linear: every linear layer but the output one (QLoRA)."""
    export: str = "merged"
    """hf/ export: merged (a plain model with the adapters folded in, loads without peft) or adapter (the adapter files only)."""

    def validate(self) -> None:
        require(self.r >= 0, f"model.lora.r must be >= 0 (0 is off), got {self.r}")
        require(self.alpha is None or self.alpha > 0, f"model.lora.alpha must be positive, got {self.alpha}")
        require(0 <= self.dropout < 1, f"model.lora.dropout must lie in [0, 1), got {self.dropout}")
        require(self.target_modules == "all-linear" or all(self.targets()), f"model.lora.target_modules must be all-linear or comma-separated module names, got {self.target_modules!r}")
        require(self.export in ("merged", "adapter"), f"model.lora.export must be merged or adapter, got {self.export!r}")
        require(
            self.r == 0 or importlib.util.find_spec("peft") is not None,
            "model.lora.r > 0 needs the peft package, which is not installed; pip install peft",
        )

    def targets(self) -> str | list[str]:
        """``target_modules`` as peft takes it."""
        if self.target_modules == "all-linear":
            return self.target_modules
        return [name.strip() for name in self.target_modules.split(",")]


@dataclass
class ModelConfig:
    """The policy language model."""

    name_or_path: str = "embedded"
    """'embedded' (the tiny default, built under cache_dir), a hub id such as Qwen/Qwen2.5-Math-1.5B, a local folder, or a
    .gguf file (converted once into cache_dir, needs the gguf and accelerate packages)."""
    gguf_file: str | None = None
    """The .gguf file inside the folder name_or_path names, read as a .gguf path would be."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository; off unless you ask for it."""
    dtype: str = "float32"
    """Weight dtype at load (float32, bfloat16, float16); compute precision is trainer.precision."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    cache_dir: str = ".cache"
    """Where the embedded model and tokenizer are built once and reused."""
    embedded: EmbeddedModelConfig = field(default_factory=EmbeddedModelConfig)
    """Shape of the embedded model."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (off unless lora.r > 0)."""

    def validate(self) -> None:
        require(self.dtype in ("float32", "bfloat16", "float16"), f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        require(bool(self.name_or_path), "model.name_or_path must not be empty")
        self.embedded.validate()
        self.lora.validate()


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then decay, stepped every optimizer step."""

    lr: float = 1e-5
    """Peak learning rate (ReFT / CARFT SFT and RL on 7B models: 1e-5; the embedded model trains from scratch and uses more)."""
    weight_decay: float = 0.0
    """AdamW weight decay (ReFT: 0)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (PyTorch defaults, as in ReFT)."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to lr."""
    schedule: str = "linear"
    """Decay after warm-up: linear (ReFT), cosine or constant."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    head_lr_scale: float = 1.0
    """Learning-rate multiplier of the heads (value, CoT embedding); RLHF libraries train the critic faster than the policy (OpenRLHF: 9e-6 vs 5e-7)."""

    def validate(self) -> None:
        require(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(all(0 <= b < 1 for b in self.betas), f"optim.betas must lie in [0, 1), got {self.betas}")
        require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.schedule in ("linear", "cosine", "constant"), f"optim.schedule must be linear, cosine or constant, got {self.schedule!r}")
        require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        require(self.head_lr_scale > 0, f"optim.head_lr_scale must be positive, got {self.head_lr_scale}")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets."""

    max_steps: int = 300
    """Optimizer steps of the run."""
    accelerator: str = "auto"
    """cpu, gpu or auto."""
    devices: int | str = 1
    """Devices per node (an int, or 'auto')."""
    num_nodes: int = 1
    """Nodes (Lightning's launchers; see README)."""
    strategy: str = "auto"
    """auto, ddp or fsdp (FSDP2, every method); see README, "Precision, memory, several GPUs and nodes"."""
    precision: str = "32"
    """32, bf16-mixed, bf16-true, 16-mixed."""
    gradient_clip_val: float = 1.0
    """Clip the global gradient norm (ReFT: 1.0)."""
    val_every_n_steps: int = 100
    """Validate (greedy decoding on held-out questions) every this many optimizer steps."""
    log_every_n_steps: int = 10
    """Write training metrics every this many steps."""
    checkpoint_every_n_steps: int = 100
    """Keep a checkpoint every this many steps, besides last.ckpt."""
    max_new_tokens: int = 128
    """Generation budget at validation and test (ReFT: 300 for GSM8K)."""
    sampler: str = "static_cache"
    """How responses are generated: static_cache (one cache allocated per batch, no per-token host sync; Llama, Qwen2 and Mistral models decode through a lean loop in which rows sharing a prompt share its keys and values) compiled (static_cache with its decode step compiled once per process by torch.compile, its compile cache kept on disk; a model outside those families, or a failed compile, falls back to the uncompiled loop with one logged line), or hf_generate (Hugging Face's generate, for a model whose code cannot use a static cache); all draw the same tokens."""
    keep_best: bool = False
    """Also keep checkpoints/best.ckpt, the checkpoint with the highest val/accuracy so far (selected on validation, never on test)."""
    early_stopping_patience: int = 0
    """Stop after this many validations in a row without a higher val/accuracy (a plateau); 0 never stops early."""
    max_skipped_updates: int = 10
    """Stop the run after this many optimizer updates in a row had a non-finite loss or gradient (each is skipped)."""

    def validate(self) -> None:
        for name in ("max_steps", "num_nodes", "val_every_n_steps", "log_every_n_steps", "checkpoint_every_n_steps", "max_new_tokens", "max_skipped_updates"):
            require(getattr(self, name) > 0, f"trainer.{name} must be positive, got {getattr(self, name)}")
        require(self.gradient_clip_val >= 0, f"trainer.gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        require(self.early_stopping_patience >= 0, f"trainer.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        require(
            self.devices == "auto" or (isinstance(self.devices, int) and self.devices > 0),
            f"trainer.devices must be a positive int or 'auto', got {self.devices!r}",
        )
        require(self.sampler in SAMPLERS, f"trainer.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        precisions = ("32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
        require(self.precision in precisions, f"trainer.precision must be one of {', '.join(precisions)}, got {self.precision!r}")


@dataclass
class RunConfig:
    """A whole run: which method, on what, how long, and where it is written."""

    method: str
    seed: int = 0
    run_name: str | None = None
    runs_dir: str = "runs"
    warmup_run: str | None = None
    """Start from the hf/ export of this SFT run under runs_dir, training it first (configs/sft.yaml, same model and data) if it does not exist."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algo: Any = None
    """The method's own knobs (its ``Config`` dataclass)."""

    def validate(self) -> None:
        for part in (self.model, self.data, self.optim, self.trainer, self.algo):
            if hasattr(part, "validate"):
                part.validate()
