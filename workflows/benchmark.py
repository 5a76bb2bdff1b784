"""Speed of every method, and of TRL's ``GRPOTrainer`` on the same work (``scripts/benchmark.py``).

Every measurement is its own process, so that each has a fresh allocator and its own peak
memory. It trains ``--warmup_steps + --steps`` steps through the Trainer ``train.py`` builds
and times every step from the Trainer's batch-start to its batch-end hook (after the
optimizer step). The warm-up steps are dropped; the figure reported is the median of the
others. RL steps are split into generation (sampling), scoring (old and reference log-probs,
values, representations, rewards) and update (the loss, backward and optimizer steps).

``--trl`` runs the same GRPO work through TRL (``pip install -e ".[bench]"``): the same
model folder, prompts, group size, batch, max new tokens, temperature, learning rate and
loss aggregation, no KL term, one update per generation. Ours and TRL's alternate for
``--rounds`` rounds and the ratio of samples per second is printed.

``--sweep KEY=V1,V2,...`` repeats the measurement with one size changed: ``samples`` (group
size), ``max_new_tokens``, ``width`` (hidden size of the embedded model, MLP 4x) or
``batch_size`` (questions per step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD_NAMES = ("sft", "ppo", "carft", "grpo", "rlsc")
SWEEPABLE = ("samples", "max_new_tokens", "width", "batch_size")
SCHEMA = "reasoning-rl/benchmark/v1"


class BenchmarkError(Exception):
    """A request the benchmark cannot run; the message is one sentence."""


@dataclass
class Case:
    """One measurement: a method (or TRL's GRPO) at one size."""

    engine: str  # "ours" or "trl"
    method: str
    batch_size: int
    samples: int
    max_new_tokens: int
    width: int
    layers: int
    model: str
    temperature: float
    lr: float
    steps: int
    warmup_steps: int
    accelerator: str
    precision: str
    cache_dir: str = ".cache"
    matched_trl: bool = False
    """Our GRPO configured as the TRL comparison runs it (no KL, TRL's loss aggregation)."""
    extra: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "TRL GRPOTrainer" if self.engine == "trl" else self.method + (" (as TRL)" if self.matched_trl else "")


# ---- one measurement, in a child process ----------------------------------------------------
class StepClock:
    """Per-step wall time and, for RL methods, the module's own phase split."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps, self.steps, self._started = warmup_steps, [], 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self, step: int, **phases: float) -> None:
        if step >= self.warmup_steps:
            self.steps.append({"step_s": time.perf_counter() - self._started, **phases})


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def model_args(case: Case) -> list[str]:
    if case.model != "embedded":
        return ["--model.name_or_path", case.model]
    return ["--model.cache_dir", case.cache_dir, "--model.embedded.hidden_size", str(case.width), "--model.embedded.intermediate_size", str(4 * case.width),
            "--model.embedded.num_layers", str(case.layers)]


def measure_ours(case: Case, workdir: Path) -> dict:
    import lightning as L
    import torch

    from datamodules.reasoning import ReasoningDataModule
    from lightning_modules.policy import load_tokenizer, resolve_model_path
    from workflows.train import METHODS, build_trainer, parse_config

    total = case.warmup_steps + case.steps
    rows = case.batch_size * case.samples
    argv = ["--method", case.method, "--warmup_run", "null", "--runs_dir", str(workdir), "--run_name", "run",
            "--trainer.max_steps", str(total), "--trainer.val_every_n_steps", str(total),
            "--trainer.checkpoint_every_n_steps", str(total), "--trainer.log_every_n_steps", "1",
            "--trainer.max_new_tokens", str(case.max_new_tokens), "--trainer.accelerator", case.accelerator,
            "--trainer.precision", case.precision, "--data.max_val_examples", "8", "--optim.lr", str(case.lr),
            *model_args(case)]
    if case.method == "sft":
        argv += ["--data.batch_size", str(rows)]  # as many sequences per step as an RL rollout has
    else:
        argv += ["--data.batch_size", str(case.batch_size), "--algo.samples_per_prompt", str(case.samples),
                 "--algo.temperature", str(case.temperature)]
    if case.matched_trl:
        argv += ["--algo.kl_coef", "0", "--algo.loss_aggregation", "grpo", "--algo.scale", "group", "--algo.ppo_epochs", "1",
                 "--algo.minibatches", "1", "--algo.clip_eps", "0.2", "--optim.warmup_steps", "0", "--optim.schedule", "constant"]
    config, _, _, _ = parse_config(argv + case.extra)
    method = METHODS[config.method]
    clock = StepClock(case.warmup_steps)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            clock.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            phases = dict(getattr(module, "step_timings", {})) or {"samples": rows, "generated_tokens": 0}
            clock.stop(trainer.global_step - 1, **phases)

    trainer = build_trainer(config, workdir / "run", [Timer()], method.manual_optimization)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    datamodule = ReasoningDataModule(config.data, tokenizer, method.batch_kind(config), seed=config.seed)
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = method(config, tokenizer, model_path)
    parameters = sum(p.numel() for p in module.policy.lm.parameters())
    trainer.fit(module, datamodule=datamodule)
    return {"steps": clock.steps, "peak_memory_mb": peak_memory_mb(), "parameters": parameters}


def measure_trl(case: Case, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl import GRPOConfig, GRPOTrainer
    from datamodules.answers import extract_answer
    from datamodules.prompts import format_prompt
    from datamodules.reasoning import load_split_records
    from lightning_modules.config import DataConfig, EmbeddedModelConfig, ModelConfig
    from datamodules.answers import rule_reward
    from lightning_modules.policy import load_tokenizer, resolve_model_path

    embedded = EmbeddedModelConfig(hidden_size=case.width, intermediate_size=4 * case.width, num_layers=case.layers)
    model_path = resolve_model_path(ModelConfig(name_or_path=case.model, cache_dir=case.cache_dir, embedded=embedded))
    tokenizer = load_tokenizer(model_path)
    total = case.warmup_steps + case.steps
    records = load_split_records(DataConfig())["train"][: case.batch_size * total]
    dataset = Dataset.from_list([{"prompt": format_prompt(r.question), "answer": r.answer} for r in records])

    def reward(completions: list[str], answer: list[float], **_) -> list[float]:
        return [rule_reward(extract_answer(text), gold) for text, gold in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=case.batch_size * case.samples,
        num_generations=case.samples, max_completion_length=case.max_new_tokens, temperature=case.temperature,
        top_k=0, top_p=1.0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=case.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=total, logging_steps=1, save_strategy="no", report_to=[], use_cpu=case.accelerator == "cpu",
        bf16=case.precision.startswith("bf16"), seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    clock = StepClock(case.warmup_steps)
    generate = [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            generate[0] = 0.0
            clock.start()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            clock.stop(state.global_step - 1, generate_s=generate[0])

    trainer = GRPOTrainer(model=model_path, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timer()])
    timed_generate = trainer._generate

    def generate_and_time(*a, **k):
        started = time.perf_counter()
        out = timed_generate(*a, **k)
        generate[0] += time.perf_counter() - started
        return out

    trainer._generate = generate_and_time
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    rows = case.batch_size * case.samples
    for step, length in zip(clock.steps, lengths[case.warmup_steps :]):
        step.update(samples=rows, generated_tokens=length * rows)
        step["rest_s"] = step["step_s"] - step["generate_s"]
    parameters = sum(p.numel() for p in trainer.model.parameters())
    return {"steps": clock.steps, "peak_memory_mb": peak_memory_mb(), "parameters": parameters}


def worker(spec: str, result_path: str) -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    case = Case(**json.loads(spec))
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = (measure_trl if case.engine == "trl" else measure_ours)(case, Path(tmp))
    Path(result_path).write_text(json.dumps(result))


# ---- the parent: run cases, aggregate, print ----------------------------------------------------
def run_case(case: Case, log_dir: Path) -> dict:
    """Measure ``case`` in a fresh process; its output goes to a log file, shown on failure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{case.engine}-{case.method}-b{case.batch_size}-g{case.samples}-t{case.max_new_tokens}-w{case.width}"
    result_path, log_path = log_dir / f"{name}.json", log_dir / f"{name}.log"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--worker", json.dumps(asdict(case)), "--result", str(result_path)]
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        print("".join(log_path.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
        raise BenchmarkError(f"measuring {case.label} failed (exit {code}); its log is {log_path}")
    return json.loads(result_path.read_text())


def summarise(case: Case, runs: list[dict]) -> dict:
    """Medians over every measured step of every round."""
    steps = [s for run in runs for s in run["steps"]]
    if not steps:
        raise BenchmarkError(f"no step of {case.label} was measured; raise --steps")

    def median(key: str) -> float | None:
        return statistics.median(s[key] for s in steps) if all(key in s for s in steps) else None

    timed = [s for s in steps if s.get("generate_s")]  # steps with a generation phase
    step_s = median("step_s")
    out = {
        "label": case.label, "engine": case.engine, "method": case.method, "batch_size": case.batch_size,
        "samples_per_prompt": case.samples, "max_new_tokens": case.max_new_tokens, "width": case.width,
        "parameters": runs[0]["parameters"], "measured_steps": len(steps), "step_s": step_s,
        "samples_per_s": median("samples") / step_s,
        "generated_tokens_per_s": statistics.median(s["generated_tokens"] / s["generate_s"] for s in timed) if timed else None,
        "peak_memory_mb": max(run["peak_memory_mb"] for run in runs),
    }
    for key in ("generate_s", "score_s", "update_s", "rest_s"):
        out[key] = median(key)
    return out


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    header = ["run", "params", "samples/step", "new tokens", "step s", "generate s", "score s", "update s", "samples/s", "gen tokens/s", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        update = r["update_s"] if r["engine"] == "ours" else r["rest_s"]  # TRL: everything after generation
        cells = [r["label"], f"{r['parameters'] / 1e6:.2f}M", str(r["batch_size"] * r["samples_per_prompt"]), str(r["max_new_tokens"]),
                 fmt(r["step_s"]), fmt(r["generate_s"]), fmt(r["score_s"]), fmt(update), fmt(r["samples_per_s"], 1),
                 fmt(r["generated_tokens_per_s"], 0), fmt(r["peak_memory_mb"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Seconds per optimizer step of each method (generation / scoring / update), tokens per second and peak memory; "
        "--trl adds TRL's GRPOTrainer on identical GRPO work and prints the throughput ratio.",
    )
    parser.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma-separated methods to measure (default: all five)")
    parser.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer on the same GRPO work, alternating with ours")
    parser.add_argument("--model", default="embedded", help="'embedded' (built from --width/--layers) or a model folder / hub id")
    parser.add_argument("--width", type=int, default=96, help="hidden size of the embedded model (MLP is 4x)")
    parser.add_argument("--layers", type=int, default=3, help="layers of the embedded model")
    parser.add_argument("--batch_size", type=int, default=8, help="questions per step")
    parser.add_argument("--samples", type=int, default=8, help="samples per question (SFT: batch_size x samples targets per step)")
    parser.add_argument("--max_new_tokens", type=int, default=100, help="response length limit")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (ours and TRL's)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per process")
    parser.add_argument("--warmup_steps", type=int, default=2, help="steps run first and not measured")
    parser.add_argument("--rounds", type=int, default=1, help="processes per case; with --trl they alternate, ours then TRL's")
    parser.add_argument("--sweep", default=None, help=f"KEY=V1,V2,... with KEY one of {', '.join(SWEEPABLE)}")
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed or bf16-true")
    parser.add_argument("--cache_dir", default=".cache", help="where embedded models are built (model.cache_dir)")
    parser.add_argument("--out", default="results/benchmark.json", help="where the JSON is written")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="after --: overrides passed to our runs, e.g. -- --model.gradient_checkpointing true")
    return parser


def parse_sweep(text: str | None) -> tuple[str | None, list[int]]:
    if text is None:
        return None, []
    key, _, values = text.partition("=")
    if key not in SWEEPABLE or not values:
        raise BenchmarkError(f"--sweep must look like KEY=V1,V2 with KEY one of {', '.join(SWEEPABLE)}, got {text!r}")
    try:
        numbers = [int(v) for v in values.split(",")]
    except ValueError:
        raise BenchmarkError(f"--sweep values must be whole numbers, got {values!r}") from None
    if any(n <= 0 for n in numbers):
        raise BenchmarkError(f"--sweep values must be positive, got {values!r}")
    return key, numbers


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args.worker, args.result)
        return 0
    try:
        return benchmark(args, argv)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def benchmark(args: argparse.Namespace, argv: list[str] | None) -> int:
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise BenchmarkError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}")
    for name in ("width", "layers", "batch_size", "samples", "max_new_tokens", "steps", "rounds"):
        if getattr(args, name) <= 0:
            raise BenchmarkError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.warmup_steps < 0:
        raise BenchmarkError(f"--warmup_steps must be >= 0, got {args.warmup_steps}")
    if args.trl:
        if importlib.util.find_spec("trl") is None:
            raise BenchmarkError('--trl needs TRL: pip install -e ".[bench]"')
    key, values = parse_sweep(args.sweep)
    base = Case("ours", "grpo", args.batch_size, args.samples, args.max_new_tokens, args.width, args.layers, args.model,
                args.temperature, args.lr, args.steps, args.warmup_steps, args.accelerator, args.precision, args.cache_dir, extra=args.extra)
    sizes = [replace(base, **{key: v}) for v in values] if key else [base]

    out = Path(args.out)
    logs = out.with_suffix("")  # results/benchmark/ beside results/benchmark.json
    rows = []
    started = time.perf_counter()
    for size in sizes:
        cases = [replace(size, method=m) for m in methods]
        if args.trl:
            cases += [replace(size, method="grpo", matched_trl=True), replace(size, engine="trl", method="grpo")]
        runs: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
        for round_ in range(args.rounds):
            for i, case in enumerate(cases):
                print(f"[{time.perf_counter() - started:6.0f} s] round {round_ + 1}/{args.rounds}: {case.label} "
                      f"(batch {case.batch_size} x {case.samples}, {case.max_new_tokens} new tokens, width {case.width})", file=sys.stderr)
                runs[i].append(run_case(case, logs))
        rows += [summarise(case, runs[i]) for i, case in enumerate(cases)]

    result = {"schema": SCHEMA, "command": " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                          "torch_threads": _torch_threads()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
              "seconds": time.perf_counter() - started, "results": rows}
    print(table(rows))
    if args.trl:
        result["trl_ratio"] = [trl_ratio(ours, trl) for ours, trl in zip(rows, rows[1:]) if trl["engine"] == "trl"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {out} ({time.perf_counter() - started:.0f} s)")
    return 0


def trl_ratio(ours: dict, trl: dict) -> dict:
    """Our samples per second over TRL's on the same work; printed, and returned for the JSON."""
    ratio = ours["samples_per_s"] / trl["samples_per_s"]
    print(f"\nGRPO samples/s, ours / TRL's: {ratio:.2f}x ({ours['samples_per_s']:.1f} against {trl['samples_per_s']:.1f}; "
          f"generation {fmt(ours['generate_s'])} s against {fmt(trl['generate_s'])} s, "
          f"the rest {fmt(ours['step_s'] - ours['generate_s'])} s against {fmt(trl['rest_s'])} s per step)")
    return {key: ours[key] for key in ("batch_size", "samples_per_prompt", "max_new_tokens", "width")} | {"ours_over_trl": ratio}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
