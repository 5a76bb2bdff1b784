"""The GPU check (``scripts/gpu_check.py``): one command, a few minutes on one GPU, that measures

1. generated tokens per second of a Qwen2.5-0.5B-shaped model (random weights, bf16): our
   sampler eager, our sampler with its step replayed as a CUDA graph, the same with the step
   compiled first (``trainer.sampler compiled``), and ``generate``; whether the graphs draw
   the eager loop's tokens;
2. our GRPO step against TRL's on the same work (scripts/benchmark.py's cases, bf16-mixed),
   and the update's model FLOPs utilisation: ``6 x (parameters outside the input embedding)
   x (prompt and response tokens)`` per update second, over the GPU's dense bf16 peak. The
   count is the full-sequence work, which is what TRL does; our update runs each shared
   prompt once, so the figure is what the same work would need at that rate.

It writes ``results/gpu_check.json`` and prints a table for docs/PERFORMANCE.md. ``--quick``
runs a tiny model for a few tokens on any device (the test suite runs it on the CPU), so that
the command is known to run before a GPU is at hand.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from workflows.cli import UsageError, parse, run_main, settings_parser

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, without sparsity), by a name in the GPU's name."""

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True)
"""Qwen2.5-0.5B's architecture (its config.json); weights here are random."""
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1024, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True)


@dataclass
class GpuCheckSettings:
    """What the GPU check measures (the options of scripts/gpu_check.py)."""

    prompts: int = 8
    """Questions per step; the default is configs/grpo.yaml's batch."""
    samples: int = 8
    """Samples per question; the default is configs/grpo.yaml's group size."""
    max_new_tokens: int = 256
    """Tokens sampled per row (the model has random weights, so rows rarely end early)."""
    steps: int = 3
    """Measured GRPO steps per engine, after one warm-up step."""
    quick: bool = False
    """A tiny model, 8 new tokens and one step, on whatever device there is: the command's own test."""
    trl: bool = True
    """Also run TRL's GRPOTrainer on the same work (needs pip install -e ".[bench]")."""
    cache_dir: str = ".cache"
    """Where the model folder is built."""
    out: str = "results/gpu_check.json"
    """Where the figures are written."""

    def validate(self) -> None:
        for name in ("prompts", "samples", "max_new_tokens", "steps"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")


def build_model(shape: dict, folder: Path) -> Path:
    """A Qwen2 model of ``shape`` with random weights (seed 0) and the embedded task's tokenizer,
    written once to ``folder``. Token ids past the tokenizer's vocabulary decode to nothing,
    which a throughput measurement does not mind."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lightning_modules.config import ModelConfig
    from lightning_modules.policy import resolve_model_path, staged_folder

    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(cache_dir=str(folder.parent))))
    torch.manual_seed(0)
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    model = Qwen2ForCausalLM(config)  # full precision on disk: both trainers keep fp32 master weights under bf16 autocast
    with staged_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


def sampler_speeds(folder: Path, settings: GpuCheckSettings, device: str) -> dict:
    """Generated tokens per second of each way to sample, on the same prompts from the same seed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamodules.prompts import format_prompt
    from datamodules.reasoning import load_split_records
    from lightning_modules.config import DataConfig
    from lightning_modules.generation import sample_with_static_cache

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    questions = [format_prompt(r.question) for r in load_split_records(DataConfig())["train"][: settings.prompts]]
    batch = tokenizer(questions, return_tensors="pt", padding=True).to(device)
    ids = batch["input_ids"].repeat_interleave(settings.samples, 0)
    mask = batch["attention_mask"].repeat_interleave(settings.samples, 0)
    new = settings.max_new_tokens

    def ours(static: bool, compiled: bool = False):
        return sample_with_static_cache(lm, ids, mask, new, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=1.0,
                                        static_shapes=static, compiled=compiled)

    def library():
        out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True, temperature=1.0, top_k=0,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return out[:, ids.size(1):]

    ways = {"ours, eager": lambda: ours(False), "ours, CUDA graph": lambda: ours(True),
            "ours, compiled, CUDA graph": lambda: ours(True, compiled=True), "generate": library}
    if device != "cuda":  # the compiled step alone is measured on the CPU by tests and docs/PERFORMANCE.md
        ways.pop("ours, CUDA graph")
        ways.pop("ours, compiled, CUDA graph")
    results, tokens = {}, {}
    for name, run in ways.items():
        torch.manual_seed(0)
        run()  # warm-up: allocator, kernels, the graph's capture
        seconds = []
        for _ in range(2):
            torch.manual_seed(1)
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            tokens[name] = run()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        count = tokens[name].numel()
        results[name] = {"seconds": min(seconds), "generated_tokens_per_s": count / min(seconds), "rows": ids.size(0),
                         "new_tokens": tokens[name].size(1)}
    for way, key in (("ours, CUDA graph", "graph"), ("ours, compiled, CUDA graph", "compiled graph")):
        if way in tokens:
            eager, graph = tokens["ours, eager"], tokens[way]
            same = eager.shape == graph.shape and bool((eager == graph).all())
            first = int((eager != graph).any(0).nonzero()[0]) if eager.shape == graph.shape and not same else None
            results[f"{key} draws the eager tokens"] = same
            results[f"{key}: first differing step"] = first  # bf16 sums in another order can flip a draw
    return results


def grpo_against_trl(folder: Path, settings: GpuCheckSettings, device: str) -> list[dict]:
    from workflows.benchmark import Case, run_case, summarise

    accelerator = "gpu" if device == "cuda" else "cpu"
    precision = "bf16-mixed" if device == "cuda" else "32"
    case = Case("ours", "grpo", settings.prompts, settings.samples, settings.max_new_tokens, 0, 0, str(folder), 1.0, 1e-6,
                settings.steps, 1, accelerator, precision, settings.cache_dir, matched_trl=True)
    cases = [case] + ([replace(case, engine="trl")] if settings.trl else [])
    logs = Path(settings.out).with_suffix("")
    return [summarise(c, [run_case(c, logs)]) for c in cases]


def model_flops(folder: Path, tokens: float) -> float:
    """6 x (parameters outside the input embedding) x tokens: forward and backward matrix products."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    hidden, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    body = layers * (attention + 3 * hidden * inter)
    return 6.0 * (body + hidden * config.vocab_size) * tokens


def gpu_name_and_peak(device: str) -> tuple[str, float | None]:
    import torch

    if device != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name()
    peak = next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)
    return name, peak


def check(settings: GpuCheckSettings) -> int:
    import importlib.util

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.trl and importlib.util.find_spec("trl") is None:
        raise UsageError('the GPU check runs TRL too: pip install -e ".[bench]" (or pass --trl false)')
    if settings.quick:
        settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, 8), steps=1)
    name, peak = gpu_name_and_peak(device)
    started = time.perf_counter()
    shape = TINY if settings.quick else QWEN25_05B
    folder = build_model(shape, Path(settings.cache_dir) / "gpu-check" / ("tiny" if settings.quick else "qwen2.5-0.5b-shape"))
    print(f"[{time.perf_counter() - started:5.0f} s] model ready: {folder}", file=sys.stderr)
    sampler = sampler_speeds(folder, settings, device)
    print(f"[{time.perf_counter() - started:5.0f} s] sampler measured", file=sys.stderr)
    rows = grpo_against_trl(folder, settings, device)
    print(f"[{time.perf_counter() - started:5.0f} s] GRPO steps measured", file=sys.stderr)
    ours = rows[0]
    flops = model_flops(folder, ours["update_tokens"]) if ours.get("update_tokens") else None
    achieved = flops / ours["update_s"] / 1e12 if flops and ours.get("update_s") else None
    result = {
        "device": name, "peak_bf16_tflops": peak, "settings": asdict(settings), "sampler": sampler,
        "grpo": rows,
        "update_tflops": achieved, "update_mfu": achieved / peak if achieved and peak else None,
        "seconds": time.perf_counter() - started,
    }
    if len(rows) > 1:
        result["ours_over_trl"] = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nwritten: {out} ({result['seconds']:.0f} s)")
    return 0


def report(result: dict) -> str:
    lines = [f"device: {result['device']}", "", "| sampler | seconds | generated tokens/s |", "|---|---|---|"]
    for way, figures in result["sampler"].items():
        if isinstance(figures, dict):
            lines.append(f"| {way} | {figures['seconds']:.2f} | {figures['generated_tokens_per_s']:,.0f} |")
    for key, name in (("graph", "CUDA graph"), ("compiled graph", "Compiled step's CUDA graph")):
        if f"{key} draws the eager tokens" in result["sampler"]:
            lines.append(f"\n{name} draws the eager tokens: {result['sampler'][f'{key} draws the eager tokens']}"
                         f" (first differing step: {result['sampler'][f'{key}: first differing step']})")
    lines += ["", "| GRPO | step s | generate s | update s | samples/s |", "|---|---|---|---|---|"]
    for r in result["grpo"]:
        update = r["update_s"] if r["engine"] == "ours" else r["rest_s"]
        lines.append(f"| {r['label']} | {r['step_s']:.2f} | {r['generate_s']:.2f} | {update:.2f} | {r['samples_per_s']:.1f} |")
    if "ours_over_trl" in result:
        lines.append(f"\nGRPO samples/s, ours / TRL's: {result['ours_over_trl']:.2f}x")
    if result["update_tflops"] is not None:
        mfu = f", MFU {100 * result['update_mfu']:.1f}% of {result['peak_bf16_tflops']:.0f}" if result["update_mfu"] else ""
        lines.append(f"update: {result['update_tflops']:.1f} TFLOP/s of full-sequence model FLOPs{mfu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = settings_parser("gpu_check.py", "Sampler tokens/s (eager, CUDA graph, generate), GRPO against TRL and the update's MFU "
                             "on a Qwen2.5-0.5B-shaped model; see docs/PERFORMANCE.md.", GpuCheckSettings, bare_flags=("quick", "trl"))

    def command() -> int:
        settings, _ = parse(parser, argv, GpuCheckSettings)
        settings.validate()
        return check(settings)

    return run_main(command)
