"""The matched-sample study (``scripts/compare.py --protocol matched``; the default study is the
papers' protocol, :mod:`workflows.protocol`): one warm-up, then SFT-continued, PPO, CARFT,
GRPO and RLSC from it for several seeds with matched budgets, each evaluated on the test split.
``--protocol label_free`` is the same study of the label-free family: RLSC, TTRL, INTUITOR,
RENT, EMPO and a random-reward control on GRPO.

**Intervals.** Every method's greedy pass@1 against the warm-up's, as a paired bootstrap 95%
interval over the test questions (per-question correctness averaged over seeds). The sampled
answers also give each question's majority share and answer entropy (the spread the label-free
rewards act on).

**Budget.** Every run learns from the same number of responses: sampled responses for the
RL methods (questions per step x samples per question x steps), annotated targets for
SFT-continued (batch x steps). The embedded configs all take 64 per step, so 6400 is 100
steps of each RL method and 400 steps of SFT at batch 16.

**Efficiency.** "Samples to +N" is the number of responses a run had learned from at the
first in-run validation whose greedy accuracy reached the warm-up's plus N points (the same
200 validation questions for every run, checked every ``val_every`` samples).

Every run is a ``scripts/train.py`` process and every evaluation a ``scripts/evaluate.py``
process, so each can be re-run alone from ``commands.sh``. Finished work is found and kept:
running the same command again continues an interrupted study.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from workflows.cli import UsageError, parse, run_main, settings_parser
from datamodules.answers import answer_entropy, majority_agreement
from workflows.evaluate import greedy_correct, read_result
from workflows.statistics import paired_bootstrap, pooled_scores

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"sft": "SFT-continued", "ppo": "PPO (ReFT)", "carft": "CARFT", "grpo": "GRPO", "rlsc": "RLSC", "ttrl": "TTRL",
          "intuitor": "INTUITOR", "rent": "RENT", "empo": "EMPO", "random": "control: random reward (GRPO)"}
COLORS = {"warmup": "#555555", "sft": "#1f77b4", "ppo": "#ff7f0e", "carft": "#2ca02c", "grpo": "#9467bd", "rlsc": "#d62728",
          "ttrl": "#17becf", "intuitor": "#bcbd22", "rent": "#e377c2", "empo": "#7f7f7f", "random": "#8c564b"}
STUDIES = {"matched": ["sft", "ppo", "carft", "grpo", "rlsc"], "label_free": ["rlsc", "ttrl", "intuitor", "rent", "empo", "random"]}
"""Each study's default methods."""
GROUPED = ("grpo", "rlsc", "ttrl", "intuitor", "rent", "empo", "random")
"""Methods that sample a group of responses per question."""


def method_of(label: str) -> tuple[str, list[str]]:
    """The scripts/train.py method and options of a study's method label (``random``: GRPO with the random reward)."""
    return ("grpo", ["--algo.reward", "random"]) if label == "random" else (label, [])
WARMUP = "sft-warmup"


@dataclass
class CompareSettings:
    """What the study runs (the options of scripts/compare.py)."""

    out: str | None = None
    """Results folder; re-running the same command continues the study in it. Default: results/study (matched) or
    results/label_free."""
    methods: list[Literal["sft", "ppo", "carft", "grpo", "rlsc", "ttrl", "intuitor", "rent", "empo", "random"]] | None = None
    """Methods to run from the warm-up, sft meaning SFT continued from it and random GRPO with the random reward; the
    default is the study's: sft, ppo, carft, grpo and rlsc (matched), rlsc, ttrl, intuitor, rent, empo and random (label_free)."""
    resamples: int = 10_000
    """Bootstrap resamples of the intervals against the warm-up."""
    seeds: int = 3
    """Seeds per method; the default 3 gives the mean and spread docs/RESULTS.md reports."""
    budget: int = 6400
    """Responses each run learns from; the default is 100 RL steps of the embedded configs' 64 responses."""
    val_every: int = 640
    """Responses between in-run validations; the default is every 10 RL steps of 64 responses."""
    samples: int = 8
    """Samples per test question for pass@k and maj@k (at least 2); the default gives docs/RESULTS.md's pass@8 and maj@8."""
    temperature: float = 0.7
    """Temperature of those samples; the default is the RL runs' sampling temperature."""
    gains: list[float] = field(default_factory=lambda: [2.0, 5.0])
    """Accuracy thresholds above the warm-up, in points, for the samples-to-threshold columns; the default gives docs/RESULTS.md's +2 and +5."""
    jobs: int = 2
    """Processes at a time, sharing the CPU cores; the default fits the 2-core machine of docs/RESULTS.md."""
    quick: bool = False
    """A tiny model, one seed and a handful of steps: checks the machinery, not the methods; off by default."""
    train_args: list[str] = field(default_factory=list, init=False)
    """Options after --: given to every scripts/train.py run."""
    study: str = field(default="matched", init=False)
    """matched or label_free (from --protocol)."""
    quick_overrides: list[str] = field(default_factory=list, init=False)
    """Training options --quick adds to every run."""
    warmup_overrides: list[str] = field(default_factory=list, init=False)
    """Training options --quick adds to the warm-up."""
    method_overrides: dict[str, list[str]] = field(default_factory=dict, init=False)
    """Training options --quick adds to each method's runs."""
    eval_overrides: list[str] = field(default_factory=list, init=False)
    """Evaluation options added to every evaluation."""

    def validate(self) -> None:
        if self.methods is None:
            self.methods = list(STUDIES[self.study])
        if self.out is None:
            self.out = "results/study" if self.study == "matched" else "results/label_free"
        for name in ("seeds", "budget", "val_every", "samples", "jobs", "resamples"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.samples < 2:
            raise UsageError("--samples must be at least 2 for pass@k and maj@k")
        if not self.methods:
            raise UsageError("--methods must name at least one method")
        if not self.gains:
            raise UsageError("--gains must give at least one threshold")

    def apply_quick(self) -> None:
        """--quick: one seed, a budget of 8 responses and the tiny model of ``QUICK_OVERRIDES``."""
        self.seeds, self.budget, self.val_every, self.samples, self.resamples = 1, 8, 4, 2, 200
        self.quick_overrides = QUICK_OVERRIDES
        self.warmup_overrides = ["--trainer.max_steps", "4", "--trainer.val_every_n_steps", "2", "--data.batch_size", "4"]
        self.method_overrides = {m: ["--data.batch_size", "2"] for m in LABELS} | {
            m: ["--data.batch_size", "2", "--algo.samples_per_prompt", "2"] for m in GROUPED}


@dataclass
class Task:
    name: str
    argv: list[str]
    needs: list[str] = field(default_factory=list)
    done: Path | None = None  # exists when the task has finished before
    status: str = "waiting"  # waiting, running, done, failed, skipped
    alone: bool = False  # nothing else can run beside it (the warm-up): it gets every core
    seconds: float = 0.0


def run_name(method: str, seed: int) -> str:
    return f"{'sft-continued' if method == 'sft' else method}-s{seed}"


# ---- planning --------------------------------------------------------------------------------
def per_step_samples(method: str, overrides: list[str]) -> int:
    """Responses one optimizer step learns from, by the method's config and the overrides."""
    from workflows.train import parse_config

    config, _, _, _ = parse_config(["--method", method, *overrides])
    return config.data.batch_size * getattr(config.algo, "samples_per_prompt", 1)


def plan(settings: CompareSettings) -> tuple[list[Task], dict[str, dict]]:
    """The study's tasks (train and evaluate, with what each waits for) and each run's facts."""
    out, train, evaluate = Path(settings.out), str(ROOT / "scripts" / "train.py"), str(ROOT / "scripts" / "evaluate.py")
    runs = out / "runs"
    common = ["--runs_dir", str(runs), *settings.quick_overrides, *settings.train_args]
    tasks = [Task(WARMUP, [sys.executable, train, "--method", "sft", "--run_name", WARMUP, "--seed", "0", *common, *settings.warmup_overrides],
                  done=runs / WARMUP / "hf" / "config.json", alone=True)]
    eval_args = ["--samples", str(settings.samples), "--temperature", str(settings.temperature), *settings.eval_overrides]
    facts: dict[str, dict] = {WARMUP: {"method": "warmup", "seed": 0, "per_step": None}}
    tasks.append(Task(f"eval {WARMUP}", [sys.executable, evaluate, str(runs / WARMUP), *eval_args, "--output", str(out / "eval" / f"{WARMUP}.json")],
                      needs=[WARMUP], done=out / "eval" / f"{WARMUP}.json"))
    for label in settings.methods:
        method, extra = method_of(label)
        overrides = [*common, *extra, *settings.method_overrides.get(label, [])]
        if method == "sft":  # continue supervised training from the warm-up, at a lower constant lr
            overrides = ["--config", str(ROOT / "configs" / "sft_continued.yaml"), "--model.name_or_path", str(runs / WARMUP / "hf"), *overrides]
        if method == "rlsc":
            overrides += ["--algo.eval_samples", "0"]  # sampled metrics come from the test evaluation
        per_step = per_step_samples(method, overrides)
        steps = max(1, settings.budget // per_step)
        val_steps = max(1, min(steps, settings.val_every // per_step))
        for seed in range(settings.seeds):
            name = run_name(label, seed)
            argv = [sys.executable, train, "--method", method, "--seed", str(seed), "--run_name", name, *overrides,
                    "--trainer.max_steps", str(steps), "--trainer.val_every_n_steps", str(val_steps),
                    "--trainer.checkpoint_every_n_steps", str(steps)]
            facts[name] = {"method": label, "seed": seed, "per_step": per_step, "steps": steps}
            tasks.append(Task(name, argv, needs=[WARMUP], done=runs / name / "hf" / "config.json"))
            result = out / "eval" / f"{name}.json"
            tasks.append(Task(f"eval {name}", [sys.executable, evaluate, str(runs / name), *eval_args, "--output", str(result)],
                              needs=[name], done=result))
    return tasks, facts


def resume_argv(task: Task, runs: Path) -> list[str]:
    """An interrupted run with a checkpoint continues from it; one without starts again."""
    folder = runs / task.name
    if folder.exists() and not (folder / "hf" / "config.json").is_file():
        if (folder / "checkpoints" / "last.ckpt").exists():
            return [task.argv[0], task.argv[1], "--resume", str(folder)]
        shutil.rmtree(folder)  # nothing trained was kept: no checkpoint
    return task.argv


# ---- running ---------------------------------------------------------------------------------
def execute(tasks: list[Task], out: Path, jobs: int) -> None:
    """Run the tasks, at most ``jobs`` at a time, each with its share of the CPU threads."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    def env(task: Task) -> dict[str, str]:
        # A fixed share per task (not whatever is free), so a re-run computes alike.
        threads = str(cores if task.alone else max(1, cores // jobs))
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}

    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if task.done is not None and task.done.exists():
            task.status = "done"
    total = sum(t.status != "done" for t in tasks)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    started_count = 0
    try:
        while True:
            for task in tasks:
                if task.status == "waiting" and any(by_name[n].status in ("failed", "skipped") for n in task.needs):
                    task.status = "skipped"
            ready = [t for t in tasks if t.status == "waiting" and all(by_name[n].status == "done" for n in t.needs)]
            for task in ready[: max(0, jobs - len(running))]:
                argv = resume_argv(task, out / "runs") if not task.name.startswith("eval ") else task.argv
                log = open(logs / f"{task.name.replace(' ', '-')}.log", "a")
                log.write(f"$ {shlex.join(argv)}\n")
                log.flush()
                running[task.name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env(task)), time.perf_counter())
                log.close()
                task.status, started_count = "running", started_count + 1
                print(f"[{started_count:>2}/{total}] {task.name} started", flush=True)
            if not running:
                break
            time.sleep(1.0)
            for name, (process, began) in list(running.items()):
                if process.poll() is None:
                    continue
                task = by_name[name]
                task.seconds = time.perf_counter() - began
                task.status = "done" if process.returncode == 0 else "failed"
                del running[name]
                if task.status == "done":
                    record_time(out, name, task.seconds)
                how = f"done in {task.seconds / 60:.1f} min" if task.status == "done" else f"FAILED (exit {process.returncode}); see {logs}/{name.replace(' ', '-')}.log"
                print(f"        {name} {how}", flush=True)
    finally:
        for process, _ in running.values():
            process.terminate()
        for process, _ in running.values():
            process.wait()


def record_time(out: Path, name: str, seconds: float) -> None:
    """Each finished task's wall seconds in ``timing.json``, kept across invocations."""
    path = out / "timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {}
    timing[name] = round(seconds, 1)
    path.write_text(json.dumps(timing, indent=1) + "\n")


# ---- reading results -------------------------------------------------------------------------
def curves(run_dir: Path, per_step: int | None) -> dict[str, list[tuple[float, float, float]]]:
    """A run's scalars as ``{tag: [(samples seen, value, seconds since start), ...]}``.

    Lightning logs an in-fit validation (and the training metrics) with the step counter
    before it advances, so a point logged at step s was taken after s + 1 steps; the
    validation before training is the first point at step 0.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    start = min((e.wall_time for series in events.values() for e in series), default=0.0)
    out = {}
    for tag, series in events.items():
        if tag.startswith("test/"):
            continue
        points: dict[int, tuple[float, float]] = {}
        for index, event in enumerate(sorted(series, key=lambda e: e.wall_time)):
            steps = 0 if (tag.startswith("val/") and index == 0) else event.step + 1
            points[steps] = (event.value, event.wall_time - start)  # a resumed run's repeat replaces the first
        out[tag] = [(s * (per_step or 0), v, t) for s, (v, t) in sorted(points.items())]
    return out


def first_reaching(curve: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    """(samples, seconds) at the first point whose value is at least ``target``."""
    for samples, value, seconds in curve:
        if value >= target - 1e-9:
            return samples, seconds
    return None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(settings: CompareSettings, facts: dict[str, dict]) -> dict:
    """Everything the table and plots show, from the result files and the runs' event files."""
    out, runs = Path(settings.out), Path(settings.out) / "runs"
    warmup_eval = read_result(out / "eval" / f"{WARMUP}.json")
    warmup_val = curves(runs / WARMUP, None)["val/accuracy"][-1][1]
    k = settings.samples
    keys = {"pass@1": "accuracy", f"pass@{k}": f"sampled/pass@{k}", f"maj@{k}": f"sampled/maj@{k}",
            "sampled pass@1": "sampled/pass@1", "response length": "response_length", "seq confidence": "sampled/seq_confidence"}
    rows = {"warmup": {"runs": [WARMUP], **{name: [warmup_eval["metrics"][key]] for name, key in keys.items()},
                       **answer_spread(warmup_eval, k), "questions": [greedy_correct(warmup_eval)]}}
    run_curves: dict[str, dict] = {}
    for name, fact in facts.items():
        if name == WARMUP:
            continue
        result = read_result(out / "eval" / f"{name}.json")
        row = rows.setdefault(fact["method"], {"runs": []})
        row["runs"].append(name)
        for label, key in keys.items():
            row.setdefault(label, []).append(result["metrics"][key])
        for label, values in answer_spread(result, k).items():
            row.setdefault(label, []).extend(values)
        row.setdefault("questions", []).append(greedy_correct(result))
        run_curves[name] = curves(runs / name, fact["per_step"])
        row.setdefault("minutes", []).append(run_curves[name]["val/accuracy"][-1][2] / 60)
        for gain in settings.gains:
            reached = first_reaching(run_curves[name]["val/accuracy"], warmup_val + gain / 100)
            row.setdefault(f"to +{gain:g}", []).append(reached)
    warmup_questions = pooled_scores(rows["warmup"]["questions"])
    intervals = {method: paired_bootstrap(pooled_scores(row["questions"]), warmup_questions, settings.resamples)
                 for method, row in rows.items() if method != "warmup"}
    timing = out / "timing.json"
    return {"intervals": intervals, "warmup_val_accuracy": warmup_val, "val_questions": _val_questions(runs / WARMUP), "rows": rows, "curves": run_curves,
            "facts": facts, "seconds": json.loads(timing.read_text()) if timing.exists() else {}}


def answer_spread(result: dict, k: int) -> dict[str, list[float]]:
    """The sampled answers' spread, averaged over questions: the majority answer's share of the k
    samples and the entropy of the answer distribution (answers clustered as the rewards do)."""
    answers = [a for detail in result["details"] for a in detail["sample_answers"]]
    _, shares = majority_agreement(answers, k)
    return {"majority share": [statistics.fmean(shares)], "answer entropy": [statistics.fmean(answer_entropy(answers, k))]}


def _val_questions(run_dir: Path) -> int:
    """How many questions the in-run validation scored (the run's own limit and split)."""
    import yaml

    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    return min(data["max_val_examples"], data["synthetic"]["num_val"]) if data["path"] == "synthetic" and not data["val_path"] else data["max_val_examples"]


# ---- writing ---------------------------------------------------------------------------------
def _pct(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _reach(values: list[tuple[float, float] | None]) -> str:
    hits = [v for v in values if v is not None]
    if not hits:
        return f"not reached (0/{len(values)})"
    samples = statistics.median(v[0] for v in hits)
    minutes = statistics.median(v[1] for v in hits) / 60
    return f"{samples:,.0f} ({minutes:.1f} min; {len(hits)}/{len(values)})"


def table(summary: dict, settings: CompareSettings) -> str:
    k = settings.samples
    gains = [f"to +{g:g}" for g in settings.gains]
    header = ["method", "seeds", "pass@1 (greedy)", "vs warm-up [95% CI]", f"pass@{k}", f"maj@{k}", "sampled pass@1", "majority share",
              "answer entropy", "response length", "seq confidence", *[f"samples {g} pts (time; seeds)" for g in gains], "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary["rows"].items():
        label = "warm-up (start of every run)" if method == "warmup" else LABELS[method]
        interval = summary["intervals"].get(method)
        cells = [label, str(len(row["runs"])), _pct(row["pass@1"]), interval.points() + (" *" if interval.excludes_zero() else "") if interval else "",
                 _pct(row[f"pass@{k}"]), _pct(row[f"maj@{k}"]), _pct(row["sampled pass@1"]), f"{statistics.fmean(row['majority share']):.3f}",
                 f"{statistics.fmean(row['answer entropy']):.3f}", f"{statistics.fmean(row['response length']):.1f}",
                 f"{statistics.fmean(row['seq confidence']):.3f}"]
        if method == "warmup":
            cells += ["-"] * (len(gains) + 1)
        else:
            cells += [_reach(row[g]) for g in gains] + [f"{statistics.fmean(row['minutes']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def efficiency_lines(summary: dict, settings: CompareSettings) -> list[str]:
    """CARFT against PPO: samples to each threshold, and the seeds' response-length gain."""
    rows, lines = summary["rows"], []
    if "carft" not in rows or "ppo" not in rows:
        return lines
    for gain in settings.gains:
        c, p = ([v[0] for v in rows[m][f"to +{gain:g}"] if v is not None] for m in ("carft", "ppo"))
        if c and p:
            lines.append(f"- Samples to +{gain:g} points, CARFT vs PPO: 1 - {statistics.median(c):,.0f} / {statistics.median(p):,.0f} = "
                         f"{100 * (1 - statistics.median(c) / statistics.median(p)):+.1f}% (median over the seeds that reached it).")
        else:
            lines.append(f"- Samples to +{gain:g} points, CARFT vs PPO: not defined (CARFT reached it in {len(c)}, PPO in {len(p)} of {settings.seeds} seeds).")
    length = {m: statistics.fmean(rows[m]["response length"]) for m in ("carft", "ppo")}
    lines.append(f"- Response-length efficiency gain (the seeds' definition), CARFT vs PPO: 1 - {length['carft']:.1f} / {length['ppo']:.1f} = "
                 f"{100 * (1 - length['carft'] / length['ppo']):+.1f}%.")
    return lines


def plots(summary: dict, out: Path, settings: CompareSettings) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[str]] = {}
    for name, fact in summary["facts"].items():
        if name != WARMUP:
            by_method.setdefault(fact["method"], []).append(name)

    def band(ax, tag: str, scale: float = 1.0) -> bool:
        drawn = False
        for method, names in by_method.items():
            series = [summary["curves"][n].get(tag) for n in names]
            if not all(series):
                continue
            length = min(len(s) for s in series)
            x = [series[0][i][0] / 1000 for i in range(length)]
            values = [[s[i][1] * scale for s in series] for i in range(length)]
            mean = [statistics.fmean(v) for v in values]
            ax.plot(x, mean, color=COLORS[method], label=LABELS[method], lw=1.8)
            if len(series) > 1:
                ax.fill_between(x, [min(v) for v in values], [max(v) for v in values], color=COLORS[method], alpha=0.15, lw=0)
            drawn = True
        return drawn

    written = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    band(ax, "val/accuracy", 100)
    warm = 100 * summary["warmup_val_accuracy"]
    ax.axhline(warm, color=COLORS["warmup"], ls="--", lw=1, label=f"warm-up ({warm:.1f})")
    for gain in settings.gains:
        ax.axhline(warm + gain, color=COLORS["warmup"], ls=":", lw=0.8)
        ax.text(ax.get_xlim()[0], warm + gain, f" +{gain:g}", va="bottom", fontsize=8, color=COLORS["warmup"])
    ax.set(xlabel="responses learned from (thousands)", ylabel=f"greedy accuracy, % ({summary['val_questions']} validation questions)",
           title=f"Held-out accuracy during training (mean; band: min-max over {settings.seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    written.append(out / "accuracy.png")
    fig.savefig(written[-1])
    plt.close(fig)

    panels = [("train/reward", "reward (rule; CARFT: with partial reward)"), ("train/kl", "KL to the reference (per token)"),
              ("train/response_length", "response length, tokens (training samples)"), ("train/seq_confidence", "RLSC: sequence confidence exp(s)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=110)
    for ax, (tag, title) in zip(axes.flat, panels):
        if not band(ax, tag):
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="responses learned from (thousands)")
        ax.grid(alpha=0.3)
    handles = [h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in axes.flat for lab in ax.get_legend_handles_labels()[1]]
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), fontsize=9)
    fig.suptitle(f"Training curves (mean; band: min-max over {settings.seeds} seeds)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    written.append(out / "training.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written


def write_report(summary: dict, settings: CompareSettings, argv: list[str], minutes: float) -> Path:
    out = Path(settings.out)
    images = plots(summary, out, settings)
    k = settings.samples
    lines = [
        "# The label-free family, matched samples" if settings.study == "label_free" else "# The matched-sample study",
        "",
        f"Command: `python scripts/compare.py {shlex.join(['--protocol', settings.study, *argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {_torch_version()}; "
        f"{settings.jobs} jobs at a time. The runs and evaluations took {sum(summary['seconds'].values()) / 60:.0f} min of wall time "
        f"summed over tasks (`timing.json`); this invocation took {minutes:.1f} min.",
        "",
        f"Every run starts from the same SFT warm-up and learns from {settings.budget:,} responses (matched budget: sampled responses for "
        f"the RL methods, annotated targets for SFT-continued). Test split: {_questions(out)} questions; "
        f"pass@1 is greedy; pass@{k}, maj@{k}, sampled pass@1 and sequence confidence come from {k} samples per question at temperature "
        f"{settings.temperature:g}. Mean ± standard deviation over seeds (percent). \"Samples to +N pts\": responses learned from at the first "
        f"in-run validation (greedy, {summary['val_questions']} validation questions, every {settings.val_every:,} responses) at or above the warm-up's "
        f"{100 * summary['warmup_val_accuracy']:.1f}% + N points; median over the seeds that reached it. \"vs warm-up\": greedy pass@1's "
        f"difference to the warm-up, paired bootstrap 95% interval over the test questions ({settings.resamples:,} resamples; per-question "
        "correctness averaged over seeds; * marks an interval that excludes 0). Majority share and answer entropy: of each question's "
        f"{k} sampled answers, averaged over questions.",
        "",
        table(summary, settings),
        "",
        *efficiency_lines(summary, settings),
        "",
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
        "Runs, configs and commands: `runs/<run>/config.yaml`, `commands.sh`; evaluations: `eval/<run>.json`; logs: `logs/`.",
    ]
    report = out / "results.md"
    report.write_text("\n".join(lines) + "\n")
    kept = {k: v for k, v in summary.items() if k not in ("curves", "rows")}
    kept["rows"] = {m: {k: v for k, v in row.items() if k != "questions"} for m, row in summary["rows"].items()}
    (out / "results.json").write_text(json.dumps(kept, indent=1, default=str) + "\n")
    return report


def _questions(out: Path) -> int:
    return read_result(out / "eval" / f"{WARMUP}.json")["metrics"]["questions"]


def _torch_version() -> str:
    import torch

    return torch.__version__


# ---- command line ----------------------------------------------------------------------------
QUICK_OVERRIDES = [  # a study in about a minute: the smallest model and data that run every path
    "--model.embedded.hidden_size", "32", "--model.embedded.num_layers", "2", "--model.embedded.num_heads", "2",
    "--model.embedded.intermediate_size", "64", "--data.synthetic.num_train", "200", "--data.synthetic.num_val", "8",
    "--data.synthetic.num_test", "8", "--data.eval_batch_size", "8", "--trainer.max_new_tokens", "12",
    "--trainer.log_every_n_steps", "1",
]


DESCRIPTION = ("Train the warm-up once, then every method from it for several seeds with matched budgets; "
               "evaluate each on the test split; write a table, plots and every command to --out. "
               "Arguments after -- go to every scripts/train.py run.")


def build_parser() -> ArgumentParser:
    parser = settings_parser("compare.py", DESCRIPTION, CompareSettings, bare_flags=("quick",))
    return parser


PROTOCOLS = ("papers", "matched", "label_free")


def split_protocol(argv: list[str]) -> tuple[str, list[str]]:
    """``--protocol NAME`` (papers by default) and the other arguments."""
    rest, protocol, index = [], "papers", 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest += argv[index:]
            break
        if arg == "--protocol" and index + 1 < len(argv):
            protocol, index = argv[index + 1], index + 2
            continue
        if arg.startswith("--protocol="):
            protocol = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    return protocol, rest


def main(argv: list[str] | None = None) -> int:
    """``--protocol papers`` (the default, :mod:`workflows.protocol`) or ``--protocol matched`` (this module's study)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    protocol, rest = split_protocol(argv)
    if protocol == "papers":
        from workflows import protocol as papers

        return papers.main(rest)
    return run_main(lambda: study(rest, protocol) if protocol in STUDIES else unknown_protocol(protocol))


def unknown_protocol(protocol: str) -> int:
    raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def study(argv: list[str], kind: str = "matched") -> int:
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    settings, _ = parse(build_parser(), ours, CompareSettings)
    settings.train_args, settings.study = train_args, kind
    settings.validate()
    if settings.quick:
        settings.apply_quick()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        tasks, facts = plan(settings)
    except Exception as error:  # a bad pass-through argument: the training parser's sentence
        raise UsageError(str(error)) from None
    (out / "commands.sh").write_text("#!/usr/bin/env bash\n# Every run and evaluation of this study, in order.\nset -e\n"
                                     + "".join(f"{shlex.join(t.argv)}\n" for t in tasks))
    execute(tasks, out, settings.jobs)
    failed = [t.name for t in tasks if t.status in ("failed", "skipped")]
    if failed:
        print(f"error: {len(failed)} tasks did not finish ({', '.join(failed)}); logs are in {out / 'logs'}. "
              f"Run the same command again to continue.", file=sys.stderr)
        return 1
    summary = summarise(settings, facts)
    report = write_report(summary, settings, argv, (time.perf_counter() - started) / 60)
    print(report.read_text())
    print(f"Written to {report}")
    return 0
