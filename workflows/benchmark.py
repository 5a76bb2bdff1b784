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
from typing import Literal

from jsonargparse import SUPPRESS, ArgumentParser

from workflows.cli import UsageError, parse, run_main, settings_parser

ROOT = Path(__file__).resolve().parents[1]
METHOD_NAMES = ("sft", "ppo", "carft", "grpo", "rlsc", "ttrl", "intuitor", "rent", "empo")
DEFAULT_METHODS = ("sft", "ppo", "carft", "grpo", "rlsc")
SWEEPABLE = ("samples", "max_new_tokens", "width", "batch_size", "vocab")
SCHEMA = "reasoning-rl/benchmark/v1"


class BenchmarkError(UsageError):
    """A request the benchmark cannot run; the message is one sentence."""


@dataclass
class BenchmarkSettings:
    """What is measured (the options of scripts/benchmark.py)."""

    methods: str = ",".join(DEFAULT_METHODS)
    """Comma-separated methods to measure (any of sft, ppo, carft, grpo, rlsc, ttrl, intuitor, rent, empo); the default is the papers' five."""
    trl: bool = False
    """Also run TRL's GRPOTrainer on the same GRPO work, alternating with ours; off by default, as it needs pip install -e ".[bench]"."""
    model: str = "embedded"
    """'embedded' (built from --width and --layers) or a model folder / hub id; the default is the project's own tiny model."""
    width: int = 96
    """Hidden size of the embedded model (MLP is 4x); the default is the embedded model's own."""
    layers: int = 3
    """Layers of the embedded model; the default is the embedded model's own."""
    vocab: int | None = None
    """Grow --model's vocabulary to this many rows (new rows zero, so their logits are 0) to see how memory grows with it at
    a fixed model size; needs a model folder. The default keeps the model's own."""
    batch_size: int = 8
    """Questions per step; the default is configs/grpo.yaml's."""
    samples: int = 8
    """Samples per question (SFT: batch_size x samples targets per step); the default is configs/grpo.yaml's group size."""
    max_new_tokens: int = 100
    """Response length limit; the default is the embedded configs' limit."""
    temperature: float = 0.7
    """Sampling temperature; the default is the RL configs'."""
    lr: float = 1e-4
    """Learning rate (ours and TRL's); the default is configs/grpo.yaml's."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass, ours (--model.gradient_checkpointing) and TRL's alike; off by default."""
    minibatches: int = 1
    """Split each step's rollout into this many backward passes: ours takes one optimizer step per part (--algo.minibatches),
    TRL accumulates the parts' gradients into one step (gradient_accumulation_steps); the forward and backward work is the
    same. The default is one pass, as small models fit; a real model's logits need more."""
    steps: int = 5
    """Measured steps per process; the default, with 2 warm-up steps, is what docs/PERFORMANCE.md reports."""
    warmup_steps: int = 2
    """Steps run first and not measured; the default leaves the first steps' allocation and set-up out."""
    rounds: int = 1
    """Processes per case; with --trl they alternate, ours then TRL's. The default is one process per case."""
    sweep: str | None = None
    """KEY=V1,V2,... with KEY one of samples, max_new_tokens, width, batch_size: one measurement per value; none by default."""
    accelerator: Literal["cpu", "gpu", "cuda", "auto"] = "cpu"
    """Where the steps run (trainer.accelerator); the default is cpu, the machine docs/PERFORMANCE.md measures on."""
    precision: Literal["32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"] = "32"
    """Compute precision (trainer.precision; TRL uses bf16 for the bf16 ones); the default is full precision, as on a CPU."""
    cache_dir: str = ".cache"
    """Where embedded models are built (model.cache_dir); the default is the training runs' cache."""
    out: str = "results/benchmark.json"
    """Where the JSON is written; the logs go to the folder of the same name. The default keeps it under results/."""
    extra: list[str] = field(default_factory=list, init=False)
    """Options after --: overrides passed to our runs, e.g. -- --model.gradient_checkpointing true."""

    def validate(self) -> None:
        methods = [m for m in self.methods.split(",") if m]
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise BenchmarkError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}")
        for name in ("width", "layers", "batch_size", "samples", "max_new_tokens", "steps", "rounds", "minibatches"):
            if getattr(self, name) <= 0:
                raise BenchmarkError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise BenchmarkError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if (self.batch_size * self.samples) % self.minibatches:
            raise BenchmarkError(f"--minibatches {self.minibatches} must divide the {self.batch_size * self.samples} samples of a step")
        if self.trl:
            if importlib.util.find_spec("trl") is None:
                raise BenchmarkError('--trl needs TRL: pip install -e ".[bench]"')
        key, _ = parse_sweep(self.sweep)
        if (self.vocab is not None or key == "vocab") and self.model == "embedded":
            raise BenchmarkError("--vocab needs --model to name a model folder; the embedded model's vocabulary is its tokenizer's")
        if self.vocab is not None and self.vocab <= 0:
            raise BenchmarkError(f"--vocab must be positive, got {self.vocab}")


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
    vocab: int | None = None
    minibatches: int = 1
    gradient_checkpointing: bool = False
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


class StepMemory:
    """Memory held when training starts (weights, reference, data) and the peak during the
    steps that follow. On a GPU: allocated CUDA memory, its peak reset at the start. On Linux
    CPUs: resident memory, its high-water mark reset by writing 5 to /proc/self/clear_refs
    (which resets what getrusage reports too, so the peak before it is kept)."""

    def __init__(self) -> None:
        self.start_mb: float | None = None
        self.before_mb = 0.0

    def start(self, cuda: bool) -> None:
        import torch

        if self.start_mb is not None:
            return
        self.cuda, self.before_mb = cuda, peak_memory_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")
            self.start_mb = _status_mb("VmRSS")

    def result(self) -> dict:
        import torch

        if self.start_mb is None:
            return {}
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _status_mb("VmHWM")
        return {"start_memory_mb": self.start_mb, "step_peak_memory_mb": peak}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def model_args(case: Case) -> list[str]:
    if case.vocab is not None:
        return ["--model.name_or_path", str(grown_vocabulary(case.model, case.vocab, Path(case.cache_dir)))]
    if case.model != "embedded":
        return ["--model.name_or_path", case.model]
    return ["--model.cache_dir", case.cache_dir, "--model.embedded.hidden_size", str(case.width), "--model.embedded.intermediate_size", str(4 * case.width),
            "--model.embedded.num_layers", str(case.layers)]


def grown_vocabulary(model: str, vocab: int, cache_dir: Path) -> Path:
    """``model`` (a folder, or a .gguf converted once) with its vocabulary grown to ``vocab``
    rows, written once under ``cache_dir/vocab``. The new input and output rows are zero, so
    the tokenizer is unchanged and a new token's logit is 0: the body is the same model and
    only the vocabulary's share of memory changes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_modules.config import ModelConfig
    from lightning_modules.policy import resolve_model_path, staged_folder

    source = Path(resolve_model_path(ModelConfig(name_or_path=model, cache_dir=str(cache_dir))))
    target = cache_dir / "vocab" / f"{source.name}-{vocab}"
    if (target / "config.json").exists():
        return target
    lm = AutoModelForCausalLM.from_pretrained(source)
    old = lm.get_input_embeddings().weight.size(0)
    if vocab < old:
        raise BenchmarkError(f"--vocab {vocab} is below the model's own {old} rows; it can only grow")
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    with torch.no_grad():
        lm.get_input_embeddings().weight[old:].zero_()
        lm.get_output_embeddings().weight[old:].zero_()
    with staged_folder(target) as staging:
        lm.save_pretrained(staging)
        AutoTokenizer.from_pretrained(source).save_pretrained(staging)
    return target


def measure_ours(case: Case, workdir: Path) -> dict:
    import lightning as L
    import torch

    from datamodules.reasoning import ReasoningDataModule
    from lightning_modules.decoder import COMPILER
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
        if case.minibatches > 1:
            argv += ["--algo.minibatches", str(case.minibatches)]
    if case.gradient_checkpointing:
        argv += ["--model.gradient_checkpointing", "true"]
    if case.matched_trl:
        argv += ["--algo.kl_coef", "0", "--algo.loss_aggregation", "grpo", "--algo.scale", "group", "--algo.ppo_epochs", "1",
                 "--algo.minibatches", str(case.minibatches), "--algo.clip_eps", "0.2", "--optim.warmup_steps", "0", "--optim.schedule", "constant"]
    config, _, _, _ = parse_config(argv + case.extra)
    method = METHODS[config.method]
    clock, memory = StepClock(case.warmup_steps), StepMemory()

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            memory.start(module.device.type == "cuda")
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
    peak = max(peak_memory_mb(), memory.before_mb)  # the whole process, loading included
    compiled = {"compile_s": COMPILER.seconds} if COMPILER.compiles else {}  # trainer.sampler compiled: in the warm-up steps, unmeasured
    return {"steps": clock.steps, "peak_memory_mb": peak, "parameters": parameters, **memory.result(), **compiled}


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
        output_dir=str(workdir / "trl"), per_device_train_batch_size=case.batch_size * case.samples // case.minibatches,
        gradient_accumulation_steps=case.minibatches, gradient_checkpointing=case.gradient_checkpointing,
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
    name = f"{case.engine}-{case.method}-b{case.batch_size}-g{case.samples}-t{case.max_new_tokens}-w{case.width}" + (f"-v{case.vocab}" if case.vocab else "")
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
        "peak_memory_mb": max(run["peak_memory_mb"] for run in runs), "vocab": case.vocab,
        "start_memory_mb": max((run["start_memory_mb"] for run in runs if "start_memory_mb" in run), default=None),
        "step_peak_memory_mb": max((run["step_peak_memory_mb"] for run in runs if "step_peak_memory_mb" in run), default=None),
    }
    for key in ("generate_s", "score_s", "update_s", "rest_s"):
        out[key] = median(key)
    out["update_tokens"] = median("tokens")  # prompt and response tokens per step (ours)
    if any("compile_s" in run for run in runs):
        out["compile_s"] = max(run.get("compile_s", 0.0) for run in runs)  # the slowest process's compiling
    return out


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    header = ["run", "params", "samples/step", "new tokens", "step s", "generate s", "score s", "update s", "samples/s", "gen tokens/s",
              "MiB at start", "step peak MiB", "process peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        update = r["update_s"] if r["engine"] == "ours" else r["rest_s"]  # TRL: everything after generation
        cells = [r["label"], f"{r['parameters'] / 1e6:.2f}M", str(r["batch_size"] * r["samples_per_prompt"]), str(r["max_new_tokens"]),
                 fmt(r["step_s"]), fmt(r["generate_s"]), fmt(r["score_s"]), fmt(update), fmt(r["samples_per_s"], 1),
                 fmt(r["generated_tokens_per_s"], 0), fmt(r.get("start_memory_mb"), 0), fmt(r.get("step_peak_memory_mb"), 0),
                 fmt(r["peak_memory_mb"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DESCRIPTION = ("Seconds per optimizer step of each method (generation / scoring / update), tokens per second and peak memory; "
               "--trl adds TRL's GRPOTrainer on identical GRPO work and prints the throughput ratio. "
               "Arguments after -- are overrides passed to our runs, e.g. -- --model.gradient_checkpointing true.")


def build_parser() -> ArgumentParser:
    parser = settings_parser("benchmark.py", DESCRIPTION, BenchmarkSettings, bare_flags=("trl", "gradient_checkpointing"))
    parser.add_argument("--worker", help=SUPPRESS)  # the measurement subprocess: a Case as JSON
    parser.add_argument("--result", help=SUPPRESS)  # where the worker writes what it measured
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
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(lambda: command(argv))


def command(argv: list[str]) -> int:
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    settings, hidden = parse(build_parser(), ours, BenchmarkSettings)
    if hidden["worker"]:
        worker(hidden["worker"], hidden["result"])
        return 0
    settings.extra = extra
    settings.validate()
    return benchmark(settings, argv)


def benchmark(settings: BenchmarkSettings, argv: list[str]) -> int:
    methods = [m for m in settings.methods.split(",") if m]
    key, values = parse_sweep(settings.sweep)
    base = Case("ours", "grpo", settings.batch_size, settings.samples, settings.max_new_tokens, settings.width, settings.layers, settings.model,
                settings.temperature, settings.lr, settings.steps, settings.warmup_steps, settings.accelerator, settings.precision,
                settings.cache_dir, vocab=settings.vocab, minibatches=settings.minibatches,
                gradient_checkpointing=settings.gradient_checkpointing, extra=settings.extra)
    sizes = [replace(base, **{key: v}) for v in values] if key else [base]

    out = Path(settings.out)
    logs = out.with_suffix("")  # results/benchmark/ beside results/benchmark.json
    rows = []
    started = time.perf_counter()
    for size in sizes:
        cases = [replace(size, method=m) for m in methods]
        if settings.trl:
            cases += [replace(size, method="grpo", matched_trl=True), replace(size, engine="trl", method="grpo")]
        runs: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
        for round_ in range(settings.rounds):
            for i, case in enumerate(cases):
                print(f"[{time.perf_counter() - started:6.0f} s] round {round_ + 1}/{settings.rounds}: {case.label} "
                      f"(batch {case.batch_size} x {case.samples}, {case.max_new_tokens} new tokens, width {case.width}"
                      + (f", vocabulary {case.vocab}" if case.vocab else "") + ")", file=sys.stderr)
                runs[i].append(run_case(case, logs))
        rows += [summarise(case, runs[i]) for i, case in enumerate(cases)]

    result = {"schema": SCHEMA, "command": " ".join(["python scripts/benchmark.py", *argv]),
              "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                          "torch_threads": _torch_threads()},
              "settings": asdict(settings),
              "seconds": time.perf_counter() - started, "results": rows}
    print(table(rows))
    for row in rows:
        if "compile_s" in row:
            print(f"{row['label']}: the decode step compiled in {row['compile_s']:.1f} s, within the unmeasured warm-up steps")
    if settings.trl:
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
