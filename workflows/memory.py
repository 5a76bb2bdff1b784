"""A memory plan (``scripts/memory_plan.py``): the bytes one GPU holds to train a model with a
method and a strategy, part by part, before a run is launched.

The parts (docs/PERFORMANCE.md has the table and the check against measured peaks):

- **weights**: every parameter at the weight dtype (float32 under ``32`` and ``bf16-mixed``,
  whose master weights stay float32; bfloat16 under ``bf16-true``). FSDP2 keeps 1/N of them,
  plus, at the activation width, the gathered copies of its root unit (embeddings, final norm,
  output projection: gathered for the whole forward and again for the whole backward) and of
  the two decoder layers it holds at a time (one computing, one prefetched).
- **gradients** and **optimizer**: AdamW's gradient and two moments, at the weight dtype, for
  the trainable parameters only (all of them, or LoRA's adapters); FSDP2 shards them too, and
  in the backward holds the largest unit's whole gradient twice at the activation width (as
  computed, and as the reduce-scatter's input) before it keeps its shard.
- **reference**: the frozen starting policy of the methods with a KL term (PPO, CARFT, GRPO
  and its label-free family), a second copy of the weights; none with LoRA, whose reference
  is the policy with its adapters switched off.
- **activations**: what one micro-batch's forward keeps for the backward, per token and
  decoder layer ``(6h + 2kv + 4I)`` values at the activation width (2 bytes under bf16, else
  4) and the float32 residual ``2h x 4`` bytes; with gradient checkpointing only each layer's
  input (``4h`` bytes) and one layer's full set. Attention is assumed fused (no
  ``seq x seq`` scores kept).
- **logits**: the scored positions' ``V``-wide logits, their float32 copy in the log-softmax
  and its gradient: ``(a + 8) V`` bytes per scored token (``a`` the activation width). RL
  scores only the response positions; SFT every position.
- **rollout**: the KV cache of one decoding batch, ``2 x layers x kv x rows x (prompt +
  response)`` values at the activation width, plus one float32 logits row per sequence.
  Under FSDP2 sampling and scoring run on the whole gathered policy at the activation width,
  which this part adds (``lightning_modules/sharding.py``; the reference gathers per layer).

The peak is the fixed parts (weights to reference) plus the larger of training (activations and
logits) and decoding (the rollout): the two never run at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workflows.cli import UsageError

GiB = 1024**3


@dataclass(frozen=True)
class Architecture:
    """A Llama-style decoder's shape (Llama, Qwen2, SmolLM2, the embedded model)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    """Input and output embeddings share one matrix."""
    qkv_bias: bool = False
    """Qwen2 has biases on the q, k and v projections."""

    @property
    def kv(self) -> int:
        """Width of the key (and of the value) projection: kv_heads x head_dim."""
        return self.kv_heads * (self.hidden // self.heads)

    def layer_parameters(self) -> int:
        h, kv, i = self.hidden, self.kv, self.intermediate
        attention = 2 * h * h + 2 * h * kv + ((h + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * i + 2 * h  # q, k, v, o; gate, up, down; two RMSNorm weights

    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_parameters() + embeddings + self.hidden  # the final norm

    def lora_parameters(self, r: int) -> int:
        """LoRA's adapters on every linear layer of the decoder (all-linear): r x (in + out) each."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)  # q, k, v, o, gate, up, down
        return self.layers * r * per_layer

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        """From a Hugging Face ``config.json`` of a Llama-style model."""
        try:
            heads = config["num_attention_heads"]
            return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                       heads=heads, kv_heads=config.get("num_key_value_heads") or heads, vocab=config["vocab_size"],
                       tied=bool(config.get("tie_word_embeddings", False)),
                       qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)))
        except KeyError as missing:
            raise UsageError(f"the model config has no {missing} field: a Llama-style config.json is needed") from None


# The public config.json values of the models the papers and configs/real/ use.
PRESETS = {
    "qwen2.5-0.5b": Architecture(24, 896, 4864, 14, 2, 151936, tied=True, qkv_bias=True),
    "qwen2.5-1.5b": Architecture(28, 1536, 8960, 12, 2, 151936, tied=True, qkv_bias=True),
    "qwen2.5-3b": Architecture(36, 2048, 11008, 16, 2, 151936, tied=True, qkv_bias=True),
    "qwen2.5-7b": Architecture(28, 3584, 18944, 28, 4, 152064, tied=False, qkv_bias=True),
    "smollm2-135m": Architecture(30, 576, 1536, 9, 3, 49152, tied=True),
}
PRESETS["qwen2.5-math-1.5b"] = PRESETS["qwen2.5-1.5b"]
PRESETS["qwen2.5-math-7b"] = PRESETS["qwen2.5-7b"]
PRESETS["qwen2.5-7b-instruct"] = PRESETS["qwen2.5-7b"]

WITH_REFERENCE = ("ppo", "carft", "grpo", "ttrl", "intuitor", "rent", "empo")
"""Methods whose default config has a KL term to the starting policy (RLSC and SFT have none)."""


def architecture(model: str) -> Architecture:
    """A preset's name, a folder holding a config.json, or a config.json file."""
    if model.lower() in PRESETS:
        return PRESETS[model.lower()]
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"--model must be a preset ({', '.join(sorted(PRESETS))}) or a folder with a config.json, got {model!r}")
    try:
        return Architecture.from_config(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is not a readable config.json ({error})") from None


@dataclass
class Setting:
    """What shapes the memory of a run."""

    method: Literal["sft", "ppo", "carft", "grpo", "rlsc", "ttrl", "intuitor", "rent", "empo"] = "grpo"
    """The method: whether there is a reference model, a rollout, and which positions are scored."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp (every GPU holds everything) or fsdp (FSDP2: weights, gradients, optimizer state and reference sharded over the GPUs)."""
    gpus: int = 1
    """GPUs the run is spread over."""
    lora_r: int = 0
    """LoRA rank on every linear layer; 0 trains the full model."""
    precision: Literal["32", "bf16-mixed", "bf16-true"] = "bf16-mixed"
    """trainer.precision."""
    micro_batch: int = 8
    """Sequences in one forward and backward on a GPU."""
    prompt_tokens: int = 256
    """Prompt length (GSM8K questions fit in 256)."""
    response_tokens: int = 512
    """Response length (trainer.max_new_tokens)."""
    rollout_rows: int = 64
    """Sequences decoded at once on a GPU (questions x samples per question)."""
    gradient_checkpointing: bool = False
    """model.gradient_checkpointing."""


def plan(arch: Architecture, setting: Setting) -> dict[str, int]:
    """Bytes per GPU of each part, and ``peak``."""
    weight = 2 if setting.precision == "bf16-true" else 4
    act = 4 if setting.precision == "32" else 2
    shard = setting.gpus if setting.strategy == "fsdp" else 1
    params = arch.parameters()
    trainable = arch.lora_parameters(setting.lora_r) if setting.lora_r else params
    lora_weights = trainable * weight if setting.lora_r else 0
    sharded = setting.strategy == "fsdp" and setting.gpus > 1
    root = params - arch.layers * arch.layer_parameters()
    gathered = (root + 2 * arch.layer_parameters()) * act if sharded else 0
    reference = setting.method in WITH_REFERENCE and not setting.lora_r
    parts = {
        "weights": params * weight // shard + gathered + lora_weights,
        "gradients": trainable * weight // shard + (2 * max(root, arch.layer_parameters()) * act if sharded and not setting.lora_r else 0),
        "optimizer": 2 * trainable * weight // shard,
        "reference": params * weight // shard if reference else 0,
    }
    h, kv, i = arch.hidden, arch.kv, arch.intermediate
    length = setting.prompt_tokens + setting.response_tokens
    tokens = setting.micro_batch * length
    per_layer = (6 * h + 2 * kv + 4 * i) * act + 2 * h * 4
    full, checkpointed = tokens * arch.layers * per_layer, tokens * (arch.layers * h * 4 + per_layer)
    parts["activations"] = checkpointed if setting.gradient_checkpointing else full
    parts["activations (other)"] = full if setting.gradient_checkpointing else checkpointed  # the same run with the other setting
    scored = setting.micro_batch * (length if setting.method == "sft" else setting.response_tokens)
    parts["logits"] = scored * arch.vocab * (act + 8)
    parts["rollout"] = 0 if setting.method == "sft" else (
        2 * arch.layers * arch.kv * setting.rollout_rows * length * act + setting.rollout_rows * arch.vocab * 4
        + (params * act if sharded else 0))
    fixed = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["reference"]
    parts["peak"] = fixed + max(parts["activations"] + parts["logits"], parts["rollout"])
    return parts


def table(rows: list[tuple[str, dict[str, int]]], checkpointing: bool = False) -> str:
    """A markdown table of plans in GiB."""
    keys = ["weights", "gradients", "optimizer", "reference", "activations", "activations (other)", "logits", "rollout", "peak"]
    names = [k if k != "activations (other)" else ("activations without checkpointing" if checkpointing else "activations with checkpointing") for k in keys]
    lines = ["| setting | " + " | ".join(names) + " |", "|" + "---|" * (len(keys) + 1)]
    for label, parts in rows:
        lines.append(f"| {label} | " + " | ".join(f"{parts[k] / GiB:.2f}" for k in keys) + " |")
    return "\n".join(lines)


# ---- the check against a measured peak --------------------------------------------------------
MEASURE = r"""
import json, os, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM

def resident():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
shape, batch, length = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sharded = "WORLD_SIZE" in os.environ  # started by torchrun: FSDP2 over its processes
if sharded:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo")
torch.manual_seed(dist.get_rank() if sharded else 0)  # each rank its own micro-batch
ids = torch.randint(0, shape["vocab"], (batch, length))
torch.ones(1) @ torch.ones(1)  # the math library's own buffers, before the baseline
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size
before = resident()
config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                     num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                     tie_word_embeddings=shape["tied"], attn_implementation="sdpa")
if sharded:
    with torch.device("meta"):  # built on no device and sharded before any weight exists, as a rank holds it
        model = LlamaForCausalLM(config)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.to_local().normal_(0.0, 0.02)
        rotary, dim = model.model.rotary_emb, shape["hidden"] // shape["heads"]
        rotary.inv_freq.copy_(1.0 / 10000.0 ** (torch.arange(0, dim, 2).float() / dim))
else:
    model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
for _ in range(2):  # the second step has the optimizer's moments in place
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
peak = resident() - before
if sharded:
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak)
    peak = max(peaks)
if not sharded or dist.get_rank() == 0:
    print(json.dumps({"peak": peak}))
if sharded:
    dist.barrier()
    dist.destroy_process_group()  # every rank closes its gloo pairs before any exits
"""


def measure(arch: Architecture, micro_batch: int, length: int, processes: int = 1) -> int:
    """Peak resident bytes of two full-precision SFT steps (AdamW) of a fresh model of this shape
    on the CPU, in a process of their own, above what the process held before building it. With
    ``processes`` > 1, under FSDP2 on that many gloo processes (each with its own micro-batch):
    the largest rank's peak."""
    import subprocess
    import sys
    import tempfile
    from dataclasses import asdict

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "measure.py"
        script.write_text(MEASURE)
        launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
        command = [sys.executable, *launch, str(script), json.dumps(asdict(arch)), str(micro_batch), str(length)]
        result = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"]


# ---- command line ----------------------------------------------------------------------------
@dataclass
class MemorySettings(Setting):
    """What to plan (the options of scripts/memory_plan.py)."""

    model: str = "qwen2.5-7b"
    """A preset (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen2.5-math-1.5b, qwen2.5-math-7b, smollm2-135m) or a folder with a config.json."""
    table: bool = False
    """Print docs/PERFORMANCE.md's table instead: GRPO on Qwen2.5 0.5B, 1.5B and 7B, on 1 and 8 GPUs, DDP, FSDP2 and LoRA."""
    check: bool = False
    """Measure two small models' peak resident memory on this CPU (Linux) against their plan."""

    def validate(self) -> None:
        for name in ("gpus", "micro_batch", "prompt_tokens", "response_tokens", "rollout_rows"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.lora_r < 0:
            raise UsageError(f"--lora_r must be at least 0, got {self.lora_r}")


CHECKS = [Architecture(4, 256, 688, 4, 4, 8192, tied=True), Architecture(8, 512, 1376, 8, 8, 32000, tied=False)]
"""The two small models of the check: 5.3M and 58M parameters."""


def docs_table() -> str:
    rows = []
    for model in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"):
        for gpus in (1, 8):
            for label, strategy, lora in (("DDP", "ddp", 0), ("FSDP2", "fsdp", 0), ("DDP + LoRA r 64", "ddp", 64)):
                if strategy == "fsdp" and gpus == 1:
                    continue
                setting = Setting(method="grpo", strategy=strategy, gpus=gpus, lora_r=lora, gradient_checkpointing=True)
                rows.append((f"{model}, {gpus} GPU{'s' if gpus > 1 else ''}, {label}", plan(PRESETS[model], setting)))
    return table(rows, checkpointing=True)


def check() -> str:
    lines = ["| parameters | strategy | planned peak, MiB | measured peak, MiB | measured / planned |", "|---|---|---|---|---|"]
    for arch in CHECKS:
        for label, strategy, gpus in (("one process", "ddp", 1), ("FSDP2, 2 processes (the larger rank)", "fsdp", 2)):
            setting = Setting(method="sft", precision="32", micro_batch=8, prompt_tokens=0, response_tokens=128, strategy=strategy, gpus=gpus)
            planned, peak = plan(arch, setting)["peak"], measure(arch, 8, 128, processes=gpus)
            lines.append(f"| {arch.parameters() / 1e6:.1f}M | {label} | {planned / 2**20:.0f} | {peak / 2**20:.0f} | {peak / planned:.2f} |")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    from workflows.cli import parse, settings_parser

    parser = settings_parser("memory_plan.py", "Bytes per GPU of a training run, part by part (docs/PERFORMANCE.md).", MemorySettings,
                             bare_flags=("table", "check", "gradient_checkpointing"))
    settings, _ = parse(parser, argv, MemorySettings)
    settings.validate()
    if settings.table:
        print("GRPO, bf16-mixed, gradient checkpointing, micro-batch 8 x (256 + 512) tokens, 64 sequences decoded at once; GiB per GPU.\n")
        print(docs_table())
        return 0
    if settings.check:
        print("Two full-precision SFT steps (AdamW) of a fresh Llama, micro-batch 8 x 128 tokens per process, on this CPU:\n")
        print(check())
        return 0
    arch = architecture(settings.model)
    setting = Setting(**{name: getattr(settings, name) for name in Setting.__dataclass_fields__})
    print(f"{settings.model}: {arch.parameters() / 1e9:.3f}B parameters"
          + (f", {arch.lora_parameters(settings.lora_r) / 1e6:.1f}M of them LoRA's" if settings.lora_r else "") + "; GiB per GPU.\n")
    print(table([(f"{settings.method}, {settings.strategy}, {settings.gpus} GPU(s), {settings.precision}", plan(arch, setting))],
                checkpointing=settings.gradient_checkpointing))
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    from workflows.cli import run_main

    return run_main(lambda: run(sys.argv[1:] if argv is None else list(argv)))
