"""Train: parse a run's configuration, build the model, data and trainer, and train.

``scripts/train.py`` is a thin wrapper around :func:`main`. A user error (unknown method,
bad override, unreadable data or checkpoint, impossible value) ends with one sentence on
stderr and exit code 2 (:mod:`workflows.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import transformers
import yaml
from transformers import AutoConfig
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from callbacks import AtomicCheckpointIO, HuggingFaceExport, Preempted, Preemption, StepProgressBar
from datamodules.reasoning import ReasoningDataModule
from datamodules.records import DataError, first_line
from lightning_modules import METHODS
from lightning_modules.base import TrainingDiverged
from lightning_modules.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainerConfig,
)
from lightning_modules.policy import load_tokenizer, resolve_model_path
from lightning_modules.sharding import (
    SHARDED, WORLD_SIZE_KEY, ShardedStrategy, is_sharded_checkpoint, recover_checkpoint, sharded_checkpoint_meta,
)
from workflows.cli import USER_ERRORS, UsageError, new_parser, one_sentence, parse_namespace

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PREEMPTED_EXIT = 128 + 15  # a process ended by SIGTERM, as shells and schedulers count it
RUN_NAME_ENV = "REASONING_RL_RUN_NAME"  # shared with DDP child processes, which re-run the script
log = logging.getLogger(__name__)


def build_parser(method: str | None) -> ArgumentParser:
    """The options of a run with ``method``; without one, the shared options only (for ``--help``)."""
    if method is None:
        description = (
            f"Train a policy with one of the methods {', '.join(METHODS)}. `--method NAME --help` adds the method's "
            "own options (algo.*). Values come from configs/NAME.yaml, then --config files, then --key value overrides."
        )
    else:
        description = f"Train with --method {method}. Values come from configs/{method}.yaml, then --config files, then --key value overrides."
    parser = new_parser("train.py", description)
    parser.add_argument("--method", type=str, required=method is not None, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--resume", type=str | None, default=None, help="run folder (or name under runs_dir) to continue from its last.ckpt")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="a specific checkpoint to continue from; 'last' means the run's last.ckpt")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights-independent randomness: data order, sampling")
    parser.add_argument("--run_name", type=str | None, default=None, help="folder name under runs_dir (default: method and start time)")
    parser.add_argument("--runs_dir", type=str, default="runs", help="where run folders are written")
    parser.add_argument(
        "--warmup_run",
        type=str | None,
        default=None,
        help="start from the hf/ export of this SFT run under runs_dir, training it first if missing; null starts from model.name_or_path",
    )
    parser.add_class_arguments(ModelConfig, "model")
    parser.add_class_arguments(DataConfig, "data")
    parser.add_class_arguments(OptimConfig, "optim")
    parser.add_class_arguments(TrainerConfig, "trainer")
    if method is not None:
        parser.add_class_arguments(METHODS[method].Config, "algo")
    return parser


def parse_config(argv: Sequence[str]) -> tuple[RunConfig, str | None, ArgumentParser, object]:
    """Return the run's config, the checkpoint to resume from (or None), the parser and its namespace."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--resume")
    pre.add_argument("--runs_dir", default="runs")
    known, _ = pre.parse_known_args(argv)
    argv = list(argv)
    base_files: list[Path] = []
    ckpt, run_dir = None, None
    if known.resume:
        run_dir = resolve_run_dir(known.resume, known.runs_dir)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        if known.method and known.method != saved["method"]:
            raise UsageError(f"run {run_dir} was trained with --method {saved['method']}, not {known.method}")
        known.method = saved["method"]
        if "--method" not in argv:
            argv += ["--method", known.method]
        base_files = [run_dir / "config.yaml"]
        ckpt = str(run_dir / "checkpoints" / "last.ckpt")
        recover_checkpoint(Path(ckpt))
        if not Path(ckpt).exists():
            raise UsageError(f"run {run_dir} has no checkpoints/last.ckpt to resume from")
    if not known.method:
        if {"-h", "--help"} & set(argv):
            build_parser(None).parse_args(["--help"])  # prints the shared options and exits 0
        raise UsageError(f"--method is required: one of {', '.join(METHODS)} (--help lists the options)")
    if known.method not in METHODS:
        raise UsageError(f"unknown method {known.method!r}; choose one of {', '.join(METHODS)}")
    if not base_files:
        base_files = [CONFIGS / f"{known.method}.yaml"]
    parser = build_parser(known.method)
    parser.default_config_files = [str(f) for f in base_files if f.is_file()]
    namespace = parse_namespace(parser, argv)
    try:
        objects = parser.instantiate(namespace)
    except (ValueError, TypeError) as error:  # a dataclass refusing its values in __post_init__
        raise UsageError(one_sentence(str(error))) from None
    config = RunConfig(
        method=objects.method,
        seed=objects.seed,
        run_name=objects.run_name,
        runs_dir=objects.runs_dir,
        warmup_run=objects.warmup_run,
        model=objects.model,
        data=objects.data,
        optim=objects.optim,
        trainer=objects.trainer,
        algo=objects.algo,
    )
    config.validate()
    METHODS[config.method].validate_run(config)
    if run_dir is not None:
        config.run_name, config.runs_dir = run_dir.name, str(run_dir.parent)
    if namespace.ckpt_path:
        ckpt = namespace.ckpt_path
    return config, ckpt, parser, namespace


def resolve_run_dir(name_or_path: str, runs_dir: str) -> Path:
    for candidate in (Path(name_or_path), Path(runs_dir) / name_or_path):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UsageError(f"{name_or_path} is not a run folder (no config.yaml there or under {runs_dir}/)")


def launched_per_process() -> bool:
    """Whether torchrun or srun started every process of this run itself (multi-node), so
    that no parent process could hand its run name down."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def run_dir_of(config: RunConfig) -> Path:
    if config.run_name is None:
        if launched_per_process() and RUN_NAME_ENV not in os.environ:
            raise UsageError("processes started by torchrun or srun must agree on a run folder: set --run_name")
        # Children of a DDP launch re-run this script; they must pick the parent's folder.
        config.run_name = os.environ.setdefault(RUN_NAME_ENV, f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    name = Path(config.run_name)
    if name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
        raise UsageError(f"run_name {config.run_name!r} must be a plain folder name")
    return Path(config.runs_dir) / name


def build_trainer(
    config: RunConfig,
    run_dir: Path,
    callbacks: Sequence[L.Callback] = (),
    manual_optimization: bool = False,
    resume_step: int | None = None,
) -> L.Trainer:
    """The Trainer of a run. ``resume_step``: the step the run continues from; TensorBoard
    hides what the interrupted run logged from there on, so the curve has no duplicates."""
    tc = config.trainer
    adapters_only = config.model.lora.r > 0 and config.model.lora.export == "adapter"
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tc.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
    )
    watchers: list[L.Callback] = []
    if tc.keep_best:
        watchers.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/accuracy", mode="max",
                                        save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False))
    if tc.early_stopping_patience:
        # Counted in validations: it is checked after each one, never at the end of a training epoch.
        watchers.append(EarlyStopping(monitor="val/accuracy", mode="max", patience=tc.early_stopping_patience, check_on_train_epoch_end=False))
    logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False,
                               **({"purge_step": resume_step} if resume_step is not None else {}))
    try:
        return L.Trainer(
            max_steps=tc.max_steps,
            max_epochs=-1,
            accelerator=tc.accelerator,
            devices=tc.devices,
            num_nodes=tc.num_nodes,
            strategy=lightning_strategy(tc),
            precision=tc.precision,
            # Methods with manual optimisation (the RL ones) clip by hand; Lightning refuses both.
            gradient_clip_val=None if manual_optimization else (tc.gradient_clip_val or None),
            val_check_interval=min(tc.val_every_n_steps, tc.max_steps),
            check_val_every_n_epoch=None,
            log_every_n_steps=tc.log_every_n_steps,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # the DataModule shards by rank itself (exact resume)
            logger=logger,
            callbacks=[checkpoints, *watchers, HuggingFaceExport(run_dir / "hf", adapters_only), StepProgressBar(),
                       Preemption(run_dir / "checkpoints" / "last.ckpt"), *callbacks],
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir),
            enable_model_summary=False,
            # Metric states made during a validate() before fit must stay updatable in fit.
            inference_mode=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as error:
        # Lightning's sentence for a device, strategy or precision this machine cannot run.
        raise UsageError(f"trainer settings cannot run here: {one_sentence(str(error))}") from None


def lightning_strategy(tc):
    """``trainer.strategy`` as Lightning takes it: ``fsdp`` is FSDP2 (:class:`ShardedStrategy`).
    DeepSpeed is refused: it has never run with these methods (the RL methods clip gradients
    by hand, which ZeRO's sharded gradients would need moved into its engine), and an untested
    path is not offered."""
    if tc.strategy.startswith("deepspeed"):
        raise UsageError(f"trainer.strategy {tc.strategy} is not supported; fsdp is the tested sharded way past one device")
    if tc.strategy.startswith("fsdp") and tc.strategy != SHARDED:
        raise UsageError(f"trainer.strategy {tc.strategy} is not supported; fsdp (FSDP2, sharded per decoder layer) is")
    return ShardedStrategy() if tc.strategy == SHARDED else tc.strategy


def check_context(config: RunConfig, model_path: str) -> None:
    """The longest prompt plus the longest target or response must fit the model's context."""
    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    context = getattr(model_config, "max_position_embeddings", None)
    d, t = config.data, config.trainer
    for name, value in (("data.max_target_tokens", d.max_target_tokens), ("trainer.max_new_tokens", t.max_new_tokens)):
        if context is not None and d.max_prompt_tokens + value > context:
            raise UsageError(
                f"data.max_prompt_tokens ({d.max_prompt_tokens}) + {name} ({value}) is more than the model's context "
                f"of {context} tokens; lower one of them"
            )


def read_checkpoint(path: str) -> dict:
    """What a resume needs to know of a checkpoint before anything loads: its step, method and
    world size, and the shape of every weight (``shapes``). A single file is memory-mapped; of
    a sharded one (a folder) only the metadata is read. One sentence if it cannot be read."""
    where = Path(path)
    recover_checkpoint(where)
    sharded, shapes = is_sharded_checkpoint(where), None
    try:
        if sharded:
            checkpoint, shapes = sharded_checkpoint_meta(where)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
                shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    except Exception as error:  # truncated, not a checkpoint, or pickled code that weights_only refuses
        reason = first_line(error)
        raise UsageError(f"{path} is not a readable checkpoint ({reason[:120]})") from None
    if not isinstance(checkpoint, dict) or shapes is None or "global_step" not in checkpoint:
        raise UsageError(f"{path} is not a training checkpoint of this project (no state_dict or global_step)")
    return {"shapes": shapes, "sharded": sharded, **{k: checkpoint.get(k) for k in ("global_step", "method", WORLD_SIZE_KEY)}}


def check_checkpoint(checkpoint: dict, path: str, module: L.LightningModule, method: str) -> None:
    """Stop, with one sentence, if ``module`` cannot continue from ``checkpoint``: written by
    another method, or holding another model's weights."""
    saved = checkpoint.get("method")
    if saved is not None and saved != method:
        raise UsageError(f"{path} was written by --method {saved}, not {method}")
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = checkpoint["shapes"]
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs)) or sorted(k for k in ours if ours[k] != theirs[k])
        raise UsageError(f"{path} holds a different model than this run builds ({len(differ)} tensors differ, e.g. {differ[0]})")


def check_layout(checkpoint: dict, path: str, config: RunConfig, trainer: L.Trainer) -> None:
    """A run continues as it was laid out: sharded (a folder of shards, written under FSDP2) or
    not, and on as many processes, since each rank's share of the data and its sampling seeds
    depend on the world size (another count would not continue the same run)."""
    sharded = config.trainer.strategy == SHARDED
    if checkpoint["sharded"] != sharded:
        written = "sharded (written under trainer.strategy fsdp)" if checkpoint["sharded"] else "one file (written without FSDP2)"
        raise UsageError(f"{path} is {written}; resume it with the strategy that wrote it, not trainer.strategy {config.trainer.strategy}")
    saved, now = checkpoint.get(WORLD_SIZE_KEY), trainer.num_nodes * trainer.num_devices
    if saved is not None and saved != now:
        raise UsageError(
            f"{path} was written by {saved} processes and this run has {now} (trainer.num_nodes x trainer.devices); "
            f"resume on {saved}, or start a new run from its weights"
        )


def train(config: RunConfig, ckpt_path: str | None = None, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Train one run; return the final validation and test metrics."""
    started = time.perf_counter()
    run_dir = run_dir_of(config)
    method = METHODS[config.method]
    # Whatever can be wrong with the request fails here, before a warm-up is trained, a model
    # loaded or anything written: the checkpoint to resume, the hardware and strategy, the
    # token budget and the data.
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path is not None else None
    resume_step = checkpoint["global_step"] if checkpoint is not None else None
    trainer = build_trainer(config, run_dir, callbacks, method.manual_optimization, resume_step)
    if checkpoint is not None:
        check_layout(checkpoint, ckpt_path, config, trainer)
    base_path = resolve_model_path(config.model)  # a warm-up keeps its base model's tokenizer and context
    check_context(config, base_path)
    tokenizer = load_tokenizer(base_path, config.model.trust_remote_code)
    datamodule = ReasoningDataModule(config.data, tokenizer, method.batch_kind(config), seed=config.seed)
    datamodule.setup("fit")
    model_path = initial_model_path(config)
    # Seeded after a warm-up trained in this process, so that a run draws the same heads
    # and samples whether or not it had to train its warm-up first.
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = method(config, tokenizer, model_path)
    if checkpoint is not None:
        check_checkpoint(checkpoint, ckpt_path, module, config.method)
        del checkpoint
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
    before = {}
    if ckpt_path is None:
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if datamodule.examples.get("test"):
            before |= trainer.test(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if datamodule.examples.get("test"):
        after |= trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if trainer.is_global_zero:
        print(summary_line(config, run_dir, before, after, datamodule, time.perf_counter() - started))
    return after


def initial_model_path(config: RunConfig) -> str:
    """What the policy (and the reference policy) start from: the warm-up run's export when
    ``warmup_run`` is set. A missing warm-up is not trained twice: a finished SFT run under
    ``runs_dir`` with exactly the warm-up's settings (say, a plain ``--method sft``) serves;
    only if there is none is the warm-up trained first."""
    if config.warmup_run is None:
        return resolve_model_path(config.model)
    name = Path(config.warmup_run)
    if name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
        raise UsageError(f"warmup_run {config.warmup_run!r} must be a plain folder name under runs_dir")
    warmup_dir = Path(config.runs_dir) / name
    export = warmup_dir / "hf"
    if (export / "config.json").is_file():
        return str(export)
    if warmup_dir.exists():
        raise UsageError(
            f"warm-up run {warmup_dir} has no hf/ export (it did not finish); continue it with "
            f"`python scripts/train.py --resume {warmup_dir}` or remove the folder"
        )
    warmup = warmup_config(config)
    same = finished_run_like(warmup)
    if same is not None:
        print(f"SFT warm-up: {same} was trained with the warm-up's settings, so it serves as {config.warmup_run}.", file=sys.stderr)
        return str(same / "hf")
    print(f"No SFT warm-up at {export}: training it first (configs/sft.yaml; later runs reuse it).", file=sys.stderr)
    train(warmup)
    return str(export)


def warmup_config(config: RunConfig) -> RunConfig:
    """The SFT run that warms ``config`` up: configs/sft.yaml on the same base model and the same
    questions, exported whole (the RL run starts from a full model; with LoRA it puts its own
    fresh adapters on it)."""
    warmup, _, _, _ = parse_config(["--method", "sft", "--run_name", config.warmup_run, "--runs_dir", config.runs_dir])
    warmup.model = replace(config.model, lora=replace(config.model.lora, export="merged"))
    loader_knobs = ("batch_size", "bucket_batches", "eval_batch_size", "num_workers")  # the warm-up keeps its own
    warmup.data = replace(config.data, **{k: getattr(warmup.data, k) for k in loader_knobs})
    return warmup


def finished_run_like(config: RunConfig) -> Path | None:
    """The newest run folder under ``config.runs_dir`` with an hf/ export whose config.yaml equals
    ``config`` in everything that shapes the weights (not its name, folder, logging cadence or
    evaluation batch size); None if there is none."""
    def settings(values: dict) -> dict:
        trainer = {k: v for k, v in values.get("trainer", {}).items() if k not in ("log_every_n_steps", "checkpoint_every_n_steps")}
        data = {k: v for k, v in values.get("data", {}).items() if k not in ("eval_batch_size", "num_workers")}
        rest = {k: v for k, v in values.items() if k not in ("run_name", "runs_dir", "trainer", "data")}
        return {**rest, "trainer": trainer, "data": data}

    wanted = settings(config_dict(config))
    found = []
    for saved in Path(config.runs_dir).glob("*/config.yaml"):
        if not (saved.parent / "hf" / "config.json").is_file():
            continue
        try:
            values = yaml.safe_load(saved.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not a run of this project: nothing to reuse
        if isinstance(values, dict) and settings(values) == wanted:
            found.append(saved.parent)
    return max(found, key=lambda folder: (folder / "hf" / "config.json").stat().st_mtime, default=None)


def summary_line(config, run_dir, before, after, datamodule, seconds) -> str:
    parts = [f"{config.method} finished in {seconds / 60:.1f} min."]
    def change(key: str) -> str:
        start = f"{100 * before[key]:.1f}% -> " if key in before else ""
        return f"{start}{100 * after[key]:.1f}%"

    if "val/accuracy" in after:
        parts.append(f"Held-out accuracy: val {change('val/accuracy')} ({len(datamodule.examples['val'])} questions)")
    if "test/accuracy" in after:
        parts[-1] += f", test {change('test/accuracy')} ({len(datamodule.examples['test'])} questions)."
    parts.append(f"Run folder: {run_dir} (TensorBoard: tensorboard --logdir {config.runs_dir}); HF model: {run_dir / 'hf'}")
    return " ".join(parts)


def config_dict(config: RunConfig) -> dict:
    out = asdict(config)
    out["data"]["synthetic"]["operations"] = list(config.data.synthetic.operations)
    out["optim"]["betas"] = list(config.optim.betas)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.disable_progress_bar()  # per-file load/save bars drown the training bar
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The DataModule saves and restores the data position itself (exact resume is tested).
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    # RL checkpoints are taken after a rollout's updates, which is the state resume needs.
    warnings.filterwarnings("ignore", message=r".*ModelCheckpoint with manual optimization.*")
    finished = False
    try:
        config, ckpt_path, _, _ = parse_config(argv)
        train(config, ckpt_path)
        finished = True
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Preempted as error:
        if rank_zero_only.rank == 0:
            print(error, file=sys.stderr)
        return PREEMPTED_EXIT
    except SIGTERMException:  # before training started: nothing to save
        if rank_zero_only.rank == 0:
            print("stopped by SIGTERM before training started; nothing was trained", file=sys.stderr)
        return PREEMPTED_EXIT
    finally:
        close_process_group(wait=finished)
    return 0


def close_process_group(wait: bool) -> None:
    """Close the launch's process group before the interpreter exits: a process that exits
    with its gloo pairs open can abort at shutdown while another rank still reads from them,
    which turns a finished run into a crash. After a run every rank finished, the ranks wait
    for each other first; after an error they do not, since another rank may never arrive."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
