"""The papers' protocol (``scripts/compare.py``, the default study): a fixed annotated training
set, SFT on it to convergence as the baseline, and RL from an early checkpoint of that same SFT
on the same questions (ReFT, arXiv 2401.08967 section 4; CARFT, arXiv 2508.15868).

0. **Base model.** The papers start from pre-trained models; the embedded model stands in with
   one SFT run on the generator's first ``base_questions`` problems (``base_steps`` steps of
   configs/sft.yaml). Every later run starts from it.
1. **Data.** ``train_questions`` fresh generated problems (after the base model's) with
   annotated chains of thought are the whole training set; every run sees only them, epoch after epoch. Validation uses
   ``val_questions`` held-out problems (the standard error of one point is printed with the
   table); the test split is only ever read for the final table.
2. **SFT baseline.** SFT from the base model on the training set at a constant learning rate, validated every
   epoch, until validation accuracy has not improved for ``patience`` validations (or
   ``sft_epochs``); its best-validation checkpoint is the baseline, one run per seed.
3. **Warm-up.** The first ``warmup_epochs`` epochs of that same SFT run (seed 0): the same
   settings and data order, stopped there, so its weights are the SFT run's at that point.
4. **RL.** Every method, and the controls (a random reward and a format-only reward, on the
   ``control_method``), from the warm-up on the same questions, until validation plateaus
   (``patience``) or ``rl_steps`` rollouts; each run's best-validation checkpoint is tested.
5. **Report.** Test accuracy of each run's best-validation checkpoint; paired bootstrap 95%
   intervals of each method's difference to the converged SFT and to PPO over the test
   questions (per-question correctness averaged over seeds); steps, samples and minutes to
   first reach the converged SFT's validation accuracy; and the curves.

Every run and evaluation is its own ``scripts/train.py`` / ``scripts/evaluate.py`` process
(``commands.sh`` lists them) and running the same command again continues the study.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workflows.cli import UsageError, parse, run_main, settings_parser
from workflows.compare import COLORS, ROOT, Task, _torch_version, curves, execute, first_reaching, per_step_samples
from workflows.evaluate import greedy_correct, read_result
from workflows.statistics import Interval, paired_bootstrap, pooled_scores, standard_error

BASE, WARMUP = "base", "sft-warmup"
LABELS = {"sft": "SFT (converged)", "ppo": "PPO (ReFT)", "carft": "CARFT", "grpo": "GRPO", "rlsc": "RLSC (no labels)",
          "random": "control: random reward", "format": "control: format-only reward"}
PALETTE = {**COLORS, "random": "#8c564b", "format": "#e377c2"}


@dataclass
class ProtocolSettings:
    """The papers' protocol (the options of scripts/compare.py; ``--protocol matched`` is the matched-sample study)."""

    out: str = "results/protocol"
    """Results folder; re-running the same command continues the study in it."""
    methods: list[Literal["ppo", "carft", "grpo", "rlsc"]] = field(default_factory=lambda: ["ppo", "carft", "grpo", "rlsc"])
    """RL methods trained from the warm-up; the default is every one."""
    controls: list[Literal["random", "format"]] = field(default_factory=lambda: ["random", "format"])
    """Control rewards (arXiv 2506.10947): random is Bernoulli(0.5), format pays 1 for any readable answer."""
    control_method: Literal["ppo", "grpo"] = "ppo"
    """The RL method the controls run on; the default is PPO, the ReFT baseline CARFT is measured against."""
    seeds: int = 2
    """Seeds per method (data order and sampling); intervals pool them question by question over the test questions."""
    base_questions: int = 20000
    """Generated problems the base model is trained on; the training set comes after them in the stream."""
    base_steps: int = 4000
    """SFT steps of the base model (configs/sft.yaml's settings, its cosine schedule stretched to these steps): measured on
    validation, 1400 steps (configs/sft.yaml's own) reach 41.5% and are still climbing steeply, 3500 reach 80%."""
    sft_lr: float = 4e-4
    """Constant learning rate of the SFT from the base model (configs/sft_continued.yaml: a tenth of the base's peak)."""
    train_questions: int = 2000
    """N, the fixed annotated training set; sized so the SFT baseline plateaus within CPU minutes."""
    val_questions: int = 1000
    """Validation questions for early stopping and the curves: 1000 puts one point's standard error near 1.5 points."""
    test_questions: int = 2000
    """Test questions, read once per run at its best-validation checkpoint; paired intervals shrink with their number."""
    warmup_epochs: int = 2
    """SFT epochs before RL starts (ReFT's warm-up: 2 epochs)."""
    sft_epochs: int = 60
    """Most epochs of the SFT baseline (it usually stops earlier, at its plateau)."""
    patience: int = 4
    """Validations without a better validation accuracy after which a run has plateaued and stops."""
    rl_steps: int = 100
    """Most rollouts of an RL run (the compute budget when validation has not plateaued)."""
    rl_val_every: int = 10
    """Rollouts between an RL run's validations."""
    resamples: int = 10_000
    """Bootstrap resamples of the intervals."""
    jobs: int = 2
    """Processes at a time, sharing the CPU cores."""
    quick: bool = False
    """A tiny model and a handful of steps: checks the machinery, not the methods."""
    train_args: list[str] = field(default_factory=list, init=False)
    """Options after --: given to every scripts/train.py run."""

    def validate(self) -> None:
        if self.sft_lr <= 0:
            raise UsageError(f"--sft_lr must be positive, got {self.sft_lr}")
        for name in ("seeds", "base_questions", "base_steps", "train_questions", "val_questions", "test_questions", "warmup_epochs", "sft_epochs", "patience", "rl_steps", "rl_val_every",
                     "resamples", "jobs"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_epochs >= self.sft_epochs:
            raise UsageError(f"--warmup_epochs ({self.warmup_epochs}) must be fewer than --sft_epochs ({self.sft_epochs})")
        if not self.methods:
            raise UsageError("--methods must name at least one method")


QUICK = {  # the smallest model and data that run every path
    "common": ["--model.embedded.hidden_size", "32", "--model.embedded.num_layers", "2", "--model.embedded.num_heads", "2",
               "--model.embedded.intermediate_size", "64", "--data.eval_batch_size", "8",
               "--trainer.max_new_tokens", "12", "--trainer.log_every_n_steps", "1"],
    "settings": {"seeds": 1, "base_questions": 32, "base_steps": 4, "train_questions": 32, "val_questions": 8, "test_questions": 8,
                 "warmup_epochs": 1, "sft_epochs": 3, "patience": 2, "rl_steps": 2, "rl_val_every": 1, "resamples": 200},
    "rl": ["--data.batch_size", "2", "--algo.samples_per_prompt", "2"],
}


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def data_args(settings: ProtocolSettings) -> list[str]:
    """The same questions for every run after the base model: N training problems after the base
    model's, the validation split at its size."""
    return ["--data.synthetic.train_offset", str(settings.base_questions), "--data.synthetic.num_train", str(settings.train_questions),
            "--data.synthetic.num_val", str(settings.val_questions), "--data.max_val_examples", str(settings.val_questions),
            "--data.synthetic.num_test", str(settings.test_questions)]


def plan(settings: ProtocolSettings) -> tuple[list[Task], dict[str, dict]]:
    """The tasks (runs and evaluations, with what each waits for) and each run's facts."""
    out, train, evaluate = Path(settings.out), str(ROOT / "scripts" / "train.py"), str(ROOT / "scripts" / "evaluate.py")
    runs = out / "runs"
    quick = QUICK["common"] if settings.quick else []
    base = ["--method", "sft", "--runs_dir", str(runs), "--run_name", BASE, "--seed", "0", "--data.synthetic.num_train", str(settings.base_questions),
            "--data.synthetic.num_val", str(settings.val_questions), "--data.max_val_examples", str(settings.val_questions),
            "--data.synthetic.num_test", str(settings.test_questions), "--trainer.max_steps", str(settings.base_steps),
            "--trainer.val_every_n_steps", str(settings.base_steps), *quick, *settings.train_args]
    tasks = [Task(BASE, [sys.executable, train, *base], done=runs / BASE / "hf" / "config.json", alone=True)]
    common = ["--runs_dir", str(runs), *data_args(settings), *quick, *settings.train_args]
    # From the base model at a constant learning rate: the warm-up is the start of the same run.
    sft = ["--method", "sft", *common, "--model.name_or_path", str(runs / BASE / "hf"), "--optim.lr", str(settings.sft_lr),
           "--optim.warmup_steps", "0", "--optim.schedule", "constant"]
    sft_per_step = per_step_samples("sft", sft)
    epoch = math.ceil(settings.train_questions / sft_per_step)
    tasks.append(Task(WARMUP, [sys.executable, train, *sft, "--seed", "0", "--run_name", WARMUP, "--trainer.max_steps",
                               str(settings.warmup_epochs * epoch), "--trainer.val_every_n_steps", str(epoch),
                               "--trainer.checkpoint_every_n_steps", str(epoch)], needs=[BASE], done=runs / WARMUP / "hf" / "config.json", alone=True))
    facts: dict[str, dict] = {WARMUP: {"method": "warmup", "seed": 0, "per_step": sft_per_step}}  # the base model is no run of the table
    stop = ["--trainer.keep_best", "true", "--trainer.early_stopping_patience", str(settings.patience)]
    sft_run = [*sft[2:], "--trainer.max_steps", str(settings.sft_epochs * epoch), "--trainer.val_every_n_steps", str(epoch),
               "--trainer.checkpoint_every_n_steps", str(epoch)]
    variants = [("sft", "sft", sft_run)]
    for label, method, extra in [(m, m, []) for m in settings.methods] + [(c, settings.control_method, ["--algo.reward", c]) for c in settings.controls]:
        rl = [*common, "--warmup_run", WARMUP, *extra, *(QUICK["rl"] if settings.quick else []), "--trainer.max_steps", str(settings.rl_steps),
              "--trainer.val_every_n_steps", str(settings.rl_val_every), "--trainer.checkpoint_every_n_steps", str(settings.rl_val_every)]
        if method == "rlsc":
            rl += ["--algo.eval_samples", "0"]  # every method is validated alike: greedy
        variants.append((label, method, rl))
    for label, method, overrides in variants:
        per_step = per_step_samples(method, overrides)
        for seed in range(settings.seeds):
            name = run_name(label, seed)
            facts[name] = {"method": label, "seed": seed, "per_step": per_step}
            argv = [sys.executable, train, "--method", method, *overrides, *stop, "--seed", str(seed), "--run_name", name]
            tasks.append(Task(name, argv, needs=[BASE, WARMUP], done=runs / name / "hf" / "config.json"))
            result = out / "eval" / f"{name}.json"
            best = runs / name / "checkpoints" / "best.ckpt"
            tasks.append(Task(f"eval {name}", [sys.executable, evaluate, str(best), "--output", str(result)], needs=[name], done=result))
    for start in (BASE, WARMUP):
        result = out / "eval" / f"{start}.json"
        tasks.append(Task(f"eval {start}", [sys.executable, evaluate, str(runs / start), "--output", str(result)], needs=[start], done=result))
    return tasks, facts


# ---- reading results -------------------------------------------------------------------------
def summarise(settings: ProtocolSettings, facts: dict[str, dict]) -> dict:
    """Every figure of the report, from the result files and the runs' event files."""
    out, runs = Path(settings.out), Path(settings.out) / "runs"
    rows: dict[str, dict] = {}
    for name, fact in facts.items():
        if name == WARMUP:
            continue
        run_curves = curves(runs / name, fact["per_step"])
        val = run_curves["val/accuracy"]
        best = max(range(len(val)), key=lambda i: (val[i][1], -i))  # the first of the best, as the checkpoint keeps it
        result = read_result(out / "eval" / f"{name}.json")
        row = rows.setdefault(fact["method"], {"runs": [], "test": [], "best_val": [], "best_step": [], "last_step": [], "questions": [],
                                               "curves": [], "per_step": fact["per_step"]})
        row["runs"].append(name)
        row["test"].append(result["metrics"]["accuracy"])
        row["best_val"].append(val[best][1])
        row["best_step"].append(round(val[best][0] / fact["per_step"]))
        row["last_step"].append(round(val[-1][0] / fact["per_step"]))
        row["questions"].append(greedy_correct(result))
        row["curves"].append(run_curves)
    target = statistics.fmean(rows["sft"]["best_val"])
    for row in rows.values():
        row["reach"] = [first_reaching(c["val/accuracy"], target) for c in row["curves"]]
    pooled = {method: pooled_scores(row["questions"]) for method, row in rows.items()}
    intervals = {}
    for method in rows:
        for against in ("sft", "ppo"):
            if against in rows and method != against:
                intervals[(method, against)] = paired_bootstrap(pooled[method], pooled[against], settings.resamples)
    warmup, base = read_result(out / "eval" / f"{WARMUP}.json"), read_result(out / "eval" / f"{BASE}.json")
    warmup_val = curves(runs / WARMUP, facts[WARMUP]["per_step"])["val/accuracy"][-1][1]
    timing = out / "timing.json"
    return {"rows": rows, "target": target, "intervals": intervals, "warmup_test": warmup["metrics"]["accuracy"], "warmup_val": warmup_val,
            "base_test": base["metrics"]["accuracy"],
            "test_questions": len(pooled["sft"]), "seconds": json.loads(timing.read_text()) if timing.exists() else {}}


def efficiency(summary: dict, settings: ProtocolSettings) -> list[str]:
    """CARFT's claim (up to 30.62% fewer steps than ReFT): steps to the converged SFT's validation
    accuracy, CARFT against PPO, with a bootstrap interval over seeds."""
    from workflows.statistics import ratio_interval

    rows = summary["rows"]
    if "carft" not in rows or "ppo" not in rows:
        return []
    steps = {m: [r[0] / rows[m]["per_step"] for r in rows[m]["reach"] if r is not None] for m in ("carft", "ppo")}
    seeds = len(rows["carft"]["runs"])
    if len(steps["carft"]) < seeds or len(steps["ppo"]) < seeds:
        return [f"- Steps to the converged SFT's validation accuracy, CARFT vs PPO: not defined (reached by CARFT in {len(steps['carft'])} "
                f"and by PPO in {len(steps['ppo'])} of {seeds} seeds)."]
    if min(steps["ppo"]) == 0:
        return ["- Steps to the converged SFT's validation accuracy, CARFT vs PPO: not defined (the warm-up already reached it)."]
    saving = ratio_interval(steps["carft"], steps["ppo"], settings.resamples)
    return [f"- Steps to the converged SFT's validation accuracy ({100 * summary['target']:.1f}%), CARFT vs PPO: "
            f"{statistics.fmean(steps['carft']):.0f} vs {statistics.fmean(steps['ppo']):.0f} rollouts, a saving of "
            f"{100 * saving.estimate:+.1f}% [{100 * saving.low:+.1f}, {100 * saving.high:+.1f}] (95% bootstrap over seeds; CARFT claims up to +30.6%)."]


# ---- writing ---------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(summary: dict) -> str:
    header = ["method", "seeds", "test acc. at best val", "vs SFT [95% CI]", "vs PPO [95% CI]", "best val", "rollouts to SFT's val (seeds)",
              "minutes to it", "stopped at"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append(f"| base model (start of every SFT run) | 1 | {100 * summary['base_test']:.1f} | | | | | | |")
    lines.append(f"| warm-up (SFT, start of every RL run) | 1 | {100 * summary['warmup_test']:.1f} | | | {100 * summary['warmup_val']:.1f} | | | |")
    for method, row in summary["rows"].items():
        reached = [r for r in row["reach"] if r is not None]
        cells = [LABELS[method], str(len(row["runs"])), _mean_sd(row["test"])]
        for against in ("sft", "ppo"):
            interval = summary["intervals"].get((method, against))
            cells.append(interval.points() + (" *" if interval.excludes_zero() else "") if interval else "")
        cells.append(_mean_sd(row["best_val"]))
        if method == "sft":
            cells += ["(the target)", "", f"epoch-steps {statistics.fmean(row['last_step']):.0f}"]
        else:
            to = f"{statistics.median(r[0] / row['per_step'] for r in reached):.0f} ({len(reached)}/{len(row['runs'])})" if reached else f"not reached (0/{len(row['runs'])})"
            minutes = f"{statistics.median(r[1] for r in reached) / 60:.1f}" if reached else ""
            cells += [to, minutes, f"{statistics.fmean(row['last_step']):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smoothed(values: list[float], window: int = 10) -> list[float]:
    """Trailing moving average over up to ``window`` points."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def plots(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for tag, file, ylabel, smooth in (("val/accuracy", "protocol_accuracy.png", "validation accuracy, % (greedy)", False),
                                      ("train/reward", "protocol_reward.png", "train/reward, 10-step moving average", True)):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
        for method, row in summary["rows"].items():
            series = [c[tag] for c in row["curves"] if tag in c]
            if not series:
                continue  # SFT logs no train/reward
            length = min(len(s) for s in series)
            x = [series[0][i][0] / row["per_step"] for i in range(length)]
            values = [[s[i][1] for s in series] for i in range(length)]
            mean = [statistics.fmean(v) for v in values]
            low, high = [min(v) for v in values], [max(v) for v in values]
            if smooth:
                mean, low, high = smoothed(mean), smoothed(low), smoothed(high)
            scale = 100 if tag == "val/accuracy" else 1
            ax.plot(x, [scale * m for m in mean], color=PALETTE.get(method, "#333333"), label=LABELS[method], lw=1.6)
            if len(series) > 1:
                ax.fill_between(x, [scale * v for v in low], [scale * v for v in high], color=PALETTE.get(method, "#333333"), alpha=0.12, lw=0)
        if tag == "val/accuracy":
            ax.axhline(100 * summary["target"], color="#1f77b4", ls="--", lw=1, label=f"converged SFT's best val ({100 * summary['target']:.1f})")
        ax.set(xlabel="training steps (SFT: batches; RL: rollouts)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        written.append(out / file)
        fig.savefig(written[-1])
        plt.close(fig)
    return written


def write_report(summary: dict, settings: ProtocolSettings, argv: list[str], minutes: float) -> Path:
    out = Path(settings.out)
    images = plots(summary, out)
    error = standard_error(summary["target"], settings.val_questions)
    lines = [
        "# The papers' protocol",
        "",
        f"Command: `python scripts/compare.py {shlex.join(argv)}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {_torch_version()}; "
        f"{settings.jobs} jobs at a time; {sum(summary['seconds'].values()) / 60:.0f} min of task time (`timing.json`), "
        f"this invocation {minutes:.1f} min.",
        "",
        f"Base model: SFT on the generator's first {settings.base_questions} problems for {settings.base_steps} steps, the stand-in for "
        "a pre-trained model. "
        f"Training set: the next {settings.train_questions} generated problems with annotated chains of thought, the same for every run. "
        f"Validation: {settings.val_questions} questions (one point's standard error at {100 * summary['target']:.0f}%: {100 * error:.1f} points). "
        f"Test: {summary['test_questions']} questions, read once per run at its best-validation checkpoint. SFT trains to its plateau "
        f"from the base model at a constant learning rate of {settings.sft_lr:g} ({settings.patience} validations without a better one, at most {settings.sft_epochs} epochs); RL starts from the first "
        f"{settings.warmup_epochs} epochs of that SFT and runs until its own plateau or {settings.rl_steps} rollouts. Test accuracy: mean ± "
        f"standard deviation over {settings.seeds} seeds. Intervals: paired bootstrap over test questions ({settings.resamples:,} resamples) of "
        "per-question accuracy averaged over seeds; * marks an interval that excludes 0.",
        "",
        table(summary),
        "",
        *efficiency(summary, settings),
        "",
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
        "Runs and their configs: `runs/<run>/config.yaml`; commands: `commands.sh`; evaluations: `eval/<run>.json`; logs: `logs/`.",
    ]
    report = out / "results.md"
    report.write_text("\n".join(lines) + "\n")
    data = {"target": summary["target"], "warmup_test": summary["warmup_test"], "intervals": {f"{a} vs {b}": vars(i) for (a, b), i in summary["intervals"].items()},
            "rows": {m: {k: v for k, v in r.items() if k not in ("curves", "questions")} for m, r in summary["rows"].items()}}
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return report


# ---- command line ----------------------------------------------------------------------------
DESCRIPTION = ("The papers' protocol: a fixed annotated training set, SFT on it to its plateau as the baseline, every RL method and two "
               "control rewards from an early checkpoint of that SFT on the same questions; a table with paired bootstrap intervals, "
               "curves and every command in --out. Arguments after -- go to every scripts/train.py run. "
               "`--protocol matched --help` shows the matched-sample study.")


def build_parser():
    return settings_parser("compare.py", DESCRIPTION, ProtocolSettings, bare_flags=("quick",))


def study(argv: list[str]) -> int:
    started = time.perf_counter()
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    settings, _ = parse(build_parser(), ours, ProtocolSettings)
    if settings.quick:
        for key, value in QUICK["settings"].items():
            setattr(settings, key, value)
    settings.train_args = train_args
    settings.validate()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, facts = plan(settings)
    (out / "commands.sh").write_text("#!/usr/bin/env bash\nset -e\n" + "\n".join(shlex.join(t.argv) for t in tasks) + "\n")
    print(f"The papers' protocol: {len(tasks)} tasks in {out} (commands.sh lists them).", flush=True)
    execute(tasks, out, settings.jobs)
    failed = [t.name for t in tasks if t.status in ("failed", "skipped")]
    if failed:
        print(f"error: {len(failed)} tasks did not finish ({', '.join(failed[:4])}); see {out / 'logs'}; run the same command again to continue",
              file=sys.stderr)
        return 1
    report = write_report(summarise(settings, facts), settings, argv, (time.perf_counter() - started) / 60)
    print(report.read_text())
    print(f"Written to {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(lambda: study(argv))
