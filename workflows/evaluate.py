"""Evaluate a model on math word problems (``scripts/evaluate.py``).

Greedy pass@1 always; with ``samples = n`` also pass@k for k = 1, 2, 4, ..., n (the
unbiased estimator over the n samples), maj@n, and the model's confidence in what it
wrote (docs/METHODS.md section 4: sequence confidence exp(s), token confidence = mean top-token
probability). Against a baseline: both models' figures, the difference, and the seeds'
"efficiency gain" 1 - (mean response length of the run / of the baseline).

A model is a Lightning checkpoint of a run, a run folder, a Hugging Face folder (or a LoRA
adapter export, read with its base model) or a hub id; data is the embedded generator's
split, a local GSM8K / ReFT / SVAMP file, or a hub data set. Model output is only ever
parsed as a number, never executed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from tqdm import tqdm

from datamodules.formats import load_records
from datamodules.prompts import format_prompt
from datamodules.reasoning import pad_sequences
from datamodules.records import DataError, Record, first_line
from datamodules.synthetic import SyntheticConfig, generate_splits
from lightning_modules.config import EmbeddedModelConfig, LoraConfig, ModelConfig
from lightning_modules.evaluation import Responses, grade, pass_at_ks, respond, sampling_seed
from lightning_modules.metrics import majority_correct
from lightning_modules.policy import Policy, load_tokenizer, resolve_model_path
from lightning_modules.sharding import is_sharded_checkpoint, load_sharded_checkpoint
from workflows.cli import UsageError, new_parser, parse_namespace, run_main
from workflows.statistics import paired_bootstrap

SCHEMA = "reasoning-rl/evaluation/v1"
"""Written into every result file; bumped when a key changes meaning."""


class EvalError(UsageError):
    """A mistake in what was asked (unreadable model, data or baseline); one sentence."""


@dataclass
class EvalSettings:
    """How a model is evaluated; two result files compare only if these are equal."""

    data: str = "synthetic"
    """'synthetic' (the embedded generator), a local .jsonl / .json file, or a hub data set name."""
    split: str = "test"
    """Embedded or hub split (train, val/validation, test); local files ignore it."""
    hub_config: str | None = None
    """Config name of a hub data set (openai/gsm8k needs 'main')."""
    format: Literal["auto", "gsm8k", "reft", "svamp"] = "auto"
    """File format: auto (from the fields), gsm8k, reft or svamp."""
    limit: int | None = None
    """Evaluate the first this many questions only."""
    samples: int = 0
    """Responses sampled per question for pass@k, maj@k and sampled confidence; 0: greedy only."""
    temperature: float = 1.0
    """Sampling temperature (confidence of sampled responses is scored at it, as RLSC does)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 is off."""
    max_new_tokens: int | None = None
    """Generation budget; null: the run's own when evaluating a run, else 300 (ReFT's for GSM8K)."""
    prompt_style: Literal["reft", "chat"] | None = None
    """reft or chat; null: the run's own when evaluating a run, else reft."""
    answer_style: Literal["reft", "lenient"] | None = None
    """How answers are read: reft (the papers' format) or lenient (also "The answer is", "Answer:", the last number);
    null: the run's own when evaluating a run, else reft. The parse rate is always reported."""
    answer_checker: Literal["rule", "math_verify"] | None = None
    """Whether an answer is right: rule (the extracted number within 0.01) or math_verify (Hugging Face's math-verify on the
    whole response; pip install math-verify); null: the run's own when evaluating a run, else rule. maj@k counts extracted numbers."""
    seed: int = 0
    """Seed of the sampled responses: the same command draws the same samples."""
    synthetic: dict[str, Any] | None = None
    """Knobs of the embedded generator; null: the run's own when evaluating a run, else its defaults."""

    def validate(self) -> None:
        checks = (
            (self.samples >= 0, f"--samples must be >= 0, got {self.samples}"),
            (self.samples != 1, "--samples 1 gives no pass@k or maj@k beyond greedy; use 0 or at least 2"),
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}"),
            (0 < self.top_p <= 1, f"--top_p must lie in (0, 1], got {self.top_p}"),
            (self.max_new_tokens is None or self.max_new_tokens > 0, f"--max_new_tokens must be positive, got {self.max_new_tokens}"),
            (self.limit is None or self.limit > 0, f"--limit must be positive, got {self.limit}"),
            (self.prompt_style in (None, "reft", "chat"), f"--prompt_style must be reft or chat, got {self.prompt_style!r}"),
            (self.format in ("auto", "gsm8k", "reft", "svamp"), f"--format must be auto, gsm8k, reft or svamp, got {self.format!r}"),
            (self.answer_checker != "math_verify" or importlib.util.find_spec("math_verify") is not None,
             "--answer_checker math_verify needs the math-verify package: pip install math-verify"),
        )
        for ok, message in checks:
            if not ok:
                raise EvalError(message)


# ---- models -------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    policy: Policy
    tokenizer: Any
    description: str
    run_config: dict | None  # the training run's config.yaml, when the model comes from a run
    name: str = ""  # short, for progress bars: the run's folder name, else the source's last part
    sampler: str = "static_cache"  # how responses are generated (trainer.sampler); both draw the same tokens


def _run_folder_of(path: Path) -> Path | None:
    """The run folder a checkpoint or export belongs to (the one holding config.yaml)."""
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file() and ((folder / "checkpoints").is_dir() or (folder / "hf").is_dir()):
            return folder
    return None


def _base_model_path(run_dir: Path, run_config: dict) -> str:
    """What a run's policy was built from: its warm-up's export, or its model.name_or_path."""
    if run_config.get("warmup_run"):
        export = run_dir.parent / run_config["warmup_run"] / "hf"
        if not (export / "config.json").is_file():
            raise EvalError(f"run {run_dir} started from warm-up {export}, which is missing, so its checkpoint cannot be rebuilt")
        return str(export)
    return resolve_model_path(_model_config_of(run_config))


def _model_config_of(run_config: dict) -> ModelConfig:
    model = dict(run_config["model"])
    model["embedded"] = EmbeddedModelConfig(**model.get("embedded", {}))
    model["lora"] = LoraConfig(**model.get("lora", {}))  # runs from before LoRA have none
    return ModelConfig(**model)


def _adapter_base(folder: Path) -> str:
    """The base model a peft adapter export names."""
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise EvalError(f"{folder} holds LoRA adapters but its adapter_config.json names no base model")
    return base


def _load_checkpoint_weights(policy: Policy, ckpt: Path) -> None:
    try:
        if is_sharded_checkpoint(ckpt):  # written under FSDP2: a folder of shards
            state = load_sharded_checkpoint(ckpt, weights_only=True)["state_dict"]
        else:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as error:  # truncated file, not a checkpoint, pickled code: all unreadable
        reason = first_line(error)
        raise EvalError(f"{ckpt} is not a readable Lightning checkpoint ({reason[:120]})") from None
    prefix = "policy.lm."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = policy.lm.load_state_dict(weights, strict=False)
    # Tied output embeddings are saved once; anything else missing means another model.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and policy.lm.config.tie_word_embeddings)]
    if missing or unexpected or not weights:
        raise EvalError(f"{ckpt} holds weights of a different model than its run's config.yaml describes ({len(missing)} missing, {len(unexpected)} unexpected)")


def load_model(source: str, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """A Lightning checkpoint (``.ckpt``), a run folder, a Hugging Face folder, a LoRA adapter
    export or a hub id. LoRA adapters are merged into the base weights for inference."""
    path = Path(source)
    model_config = ModelConfig(dtype=dtype, trust_remote_code=trust_remote_code)
    run_dir = _run_folder_of(path) if path.exists() else None
    run_config = yaml.safe_load((run_dir / "config.yaml").read_text()) if run_dir else None
    if path.is_file() and path.suffix not in (".ckpt", ".gguf"):
        raise EvalError(f"{source} is a file but neither a .ckpt checkpoint nor a .gguf model; give a checkpoint, a run folder, "
                        "a Hugging Face folder, a .gguf file or a hub id")
    checkpoint, adapter = None, None
    if path.suffix == ".ckpt":
        if not path.exists():
            raise EvalError(f"checkpoint {source} does not exist")
        if run_config is None:
            raise EvalError(f"checkpoint {source} is not inside a run folder (runs/<name>/checkpoints/), whose config.yaml says which model it holds")
        checkpoint, weights_from = path, _base_model_path(run_dir, run_config)
        model_config.lora = _model_config_of(run_config).lora  # the checkpoint holds the run's adapters
    elif run_dir is not None and path == run_dir:
        if (run_dir / "hf" / "config.json").is_file():
            weights_from = str(run_dir / "hf")
        elif (run_dir / "hf" / "adapter_config.json").is_file():
            adapter, weights_from = run_dir / "hf", _base_model_path(run_dir, run_config)
        elif (run_dir / "checkpoints" / "last.ckpt").exists():
            checkpoint, weights_from = run_dir / "checkpoints" / "last.ckpt", _base_model_path(run_dir, run_config)
        else:
            raise EvalError(f"run {run_dir} has neither an hf/ export nor checkpoints/last.ckpt")
    elif (path / "adapter_config.json").is_file():
        adapter = path
        weights_from = _base_model_path(run_dir, run_config) if run_config else _adapter_base(path)
    elif path.is_dir() and not (path / "config.json").is_file():
        raise EvalError(f"{source} is a folder with neither a config.json (Hugging Face) nor a config.yaml (run)")
    elif source == "embedded" or path.suffix.lower() == ".gguf":
        weights_from = resolve_model_path(replace(model_config, name_or_path=source))  # a .gguf is converted once into the cache
    else:
        weights_from = source
    try:
        tokenizer = load_tokenizer(weights_from, trust_remote_code)
        policy = Policy.from_pretrained(weights_from, model_config)
        if adapter is not None:
            import peft

            policy.lm = peft.PeftModel.from_pretrained(policy.lm, str(adapter))
    except EvalError:
        raise
    except Exception as error:  # no such hub id, no network, broken folder
        reason = first_line(error)
        raise EvalError(f"cannot load a model from {source} ({reason[:160]})") from None
    if checkpoint is not None:
        _load_checkpoint_weights(policy, checkpoint)
    policy.merge_adapters()
    policy.eval().requires_grad_(False)
    name = run_dir.name if run_dir is not None else Path(source).name
    return LoadedModel(policy, tokenizer, str(checkpoint or adapter or weights_from), run_config, name)


def settings_for(model: LoadedModel, settings: EvalSettings) -> EvalSettings:
    """``settings`` with every null filled: a run's own generation budget, prompt style and
    generator knobs when the model comes from a run, else the defaults."""
    run = model.run_config
    fallback = {"max_new_tokens": 300, "prompt_style": "reft", "answer_style": "reft", "answer_checker": "rule", "synthetic": {}}
    if run is not None:
        fallback = {
            "max_new_tokens": run["trainer"]["max_new_tokens"],
            "prompt_style": run["data"]["prompt_style"],
            "answer_style": run["data"].get("answer_style", "reft"),
            "answer_checker": run["data"].get("answer_checker", "rule"),
            "synthetic": run["data"]["synthetic"],
        }
    return replace(settings, **{k: v for k, v in fallback.items() if getattr(settings, k) is None})


# ---- data -------------------------------------------------------------------------------
def load_questions(settings: EvalSettings) -> list[Record]:
    if settings.data == "synthetic":
        split = {"validation": "val"}.get(settings.split, settings.split)
        splits = generate_splits(SyntheticConfig(**_synthetic_knobs(settings.synthetic)))
        if split not in splits:
            raise EvalError(f"the embedded data has splits train, val and test, not {settings.split!r}")
        records = splits[split]
    else:
        try:
            records = load_records(settings.data, split=settings.split, hub_config=settings.hub_config, fmt=settings.format, limit=settings.limit)
        except DataError as error:
            raise EvalError(str(error)) from None
    return records[: settings.limit] if settings.limit else records


def _synthetic_knobs(knobs: dict) -> dict:
    knobs = dict(knobs)
    if "operations" in knobs:
        knobs["operations"] = tuple(knobs["operations"])
    return knobs


# ---- generation and scoring ----------------------------------------------------------------
def answer_all(
    model: LoadedModel, prompts: list[list[int]], n: int, settings: EvalSettings, batch_size: int, label: str
) -> Responses:
    """Greedy responses (``n = 0``) or ``n`` sampled responses per prompt, with confidence, from
    the evaluation engine. Prompts are batched by length (less padding) and the results put back
    in order; batch ``i`` is drawn under ``sampling_seed(seed, 0, i)``, so the same command draws
    the same responses."""
    policy, tokenizer = model.policy, model.tokenizer
    device = next(policy.parameters()).device
    per_prompt = max(n, 1)
    questions_per_call = max(1, batch_size // per_prompt)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * (len(prompts) * per_prompt)
    lengths, seq_conf, tok_conf = (torch.zeros(len(texts)) for _ in range(3))
    calls = range(0, len(order), questions_per_call)
    for call, start in enumerate(tqdm(calls, desc=label, unit="batch", file=sys.stderr, dynamic_ncols=True)):
        chosen = order[start : start + questions_per_call]
        prompt_ids, prompt_mask = pad_sequences([prompts[i] for i in chosen], tokenizer.pad_token_id, "left")
        out = respond(
            policy, tokenizer, prompt_ids.to(device), prompt_mask.to(device), settings.max_new_tokens, n=n,
            temperature=settings.temperature, top_p=settings.top_p, seed=sampling_seed(settings.seed, 0, call),
            sampler=model.sampler, confidence=True,
        )
        rows = torch.tensor([i * per_prompt + j for i in chosen for j in range(per_prompt)])
        for row, text in zip(rows.tolist(), out.texts):
            texts[row] = text
        lengths[rows], seq_conf[rows], tok_conf[rows] = out.lengths, out.seq_confidence, out.token_confidence
    return Responses(texts, lengths, seq_conf, tok_conf)


def summarise(responses: Responses, records: list[Record], n: int, answer_style: str = "reft", checker: str = "rule") -> tuple[dict[str, float], list[dict]]:
    """Metrics of greedy (``n = 0``) or sampled responses, and per-question details."""
    per_prompt = max(n, 1)
    graded = grade(responses.texts, [r.answer for r in records], n, answer_style, checker)
    prefix = "sampled/" if n else ""
    metrics = {
        f"{prefix}parse_rate": graded.parsed.double().mean().item(),
        f"{prefix}response_length": responses.lengths.mean().item(),
        f"{prefix}seq_confidence": responses.seq_confidence.mean().item(),
        f"{prefix}token_confidence": responses.token_confidence.mean().item(),
    }
    details = []
    for q, record in enumerate(records):
        span = slice(q * per_prompt, (q + 1) * per_prompt)
        details.append({"uid": record.uid, "gold": record.answer, "responses": responses.texts[span],
                        "answers": graded.predictions[span], "correct": graded.correct[q].tolist()})
    if not n:
        return {"accuracy": graded.correct.double().mean().item(), **metrics}, details
    for k in pass_at_ks(n):
        metrics[f"sampled/pass@{k}"] = graded.pass_at(k).double().mean().item()
    metrics[f"sampled/maj@{n}"] = graded.majority.double().mean().item()
    return metrics, details


def evaluate(model: LoadedModel, settings: EvalSettings, batch_size: int = 64) -> dict[str, Any]:
    """Evaluate ``model``; returns the result record (see :data:`SCHEMA`)."""
    settings.validate()
    settings = settings_for(model, settings)
    started = time.perf_counter()
    records = load_questions(settings)
    tokenizer = model.tokenizer
    texts = [format_prompt(r.question, tokenizer, settings.prompt_style) for r in records]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    context = getattr(model.policy.lm.config, "max_position_embeddings", None) or 10**9
    room = context - settings.max_new_tokens
    if room < 1:
        raise EvalError(f"--max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in the model's context of {context} tokens")
    truncated = sum(len(p) > room for p in prompts)
    if truncated:
        print(f"warning: {truncated} of {len(prompts)} prompts are longer than the model's context ({context}) minus "
              f"--max_new_tokens ({settings.max_new_tokens}); their beginnings were cut", file=sys.stderr)
    prompts = [p[-room:] for p in prompts]
    greedy, details = summarise(answer_all(model, prompts, 0, settings, batch_size, f"{model.name} greedy"), records, 0, settings.answer_style,
                                settings.answer_checker)
    metrics = {"questions": len(records), **greedy}
    if settings.samples:
        sampled, sampled_details = summarise(answer_all(model, prompts, settings.samples, settings, batch_size, f"{model.name} x{settings.samples}"), records, settings.samples,
                                              settings.answer_style, settings.answer_checker)
        metrics |= sampled
        for d, s in zip(details, sampled_details):
            d["samples"], d["sample_answers"], d["sample_correct"] = s["responses"], s["answers"], s["correct"]
    metrics["prompts_truncated"] = truncated
    return {
        "schema": SCHEMA,
        "model": model.description,
        "settings": asdict(settings),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
        "details": details,
    }


# ---- comparison ----------------------------------------------------------------------------
def compare(result: dict, baseline: dict) -> dict[str, float]:
    """The run minus the baseline on every shared metric, and the seeds' efficiency gain:
    ``1 - response_length(run) / response_length(baseline)`` (positive: the run is shorter)."""
    if result["settings"] != baseline["settings"]:
        differing = sorted(k for k in result["settings"] if result["settings"][k] != baseline["settings"].get(k))
        raise EvalError(f"the baseline was evaluated with different settings ({', '.join(differing)}), so the two cannot be compared")
    ours, theirs = result["metrics"], baseline["metrics"]
    out = {f"{k}_difference": ours[k] - theirs[k] for k in ours if k in theirs and k not in ("questions", "prompts_truncated")}
    out["efficiency_gain"] = 1.0 - ours["response_length"] / theirs["response_length"] if theirs["response_length"] else 0.0
    if [d["uid"] for d in result.get("details", [])] == [d["uid"] for d in baseline.get("details", [])]:
        ours_q, theirs_q = per_question(result), per_question(baseline)
        for key in ours_q.keys() & theirs_q.keys():
            interval = paired_bootstrap(ours_q[key], theirs_q[key])
            out[f"{key}_difference_interval"] = [interval.low, interval.high]
    return out


def greedy_correct(result: dict) -> list[float]:
    """Greedy correctness (0 or 1) of every question, in the result file's order."""
    return [float(detail["correct"][0]) for detail in result["details"]]


def per_question(result: dict) -> dict[str, list[float]]:
    """Each question's score on the metrics that average over questions: greedy accuracy and,
    if sampled, pass@1 (the fraction of its samples that are right), pass@n and maj@n."""
    details = result.get("details") or []
    if not details:
        return {}
    scores = {"accuracy": greedy_correct(result)}
    if "sample_correct" in details[0]:
        n = len(details[0]["sample_correct"])
        scores["sampled/pass@1"] = [sum(d["sample_correct"]) / n for d in details]
        scores[f"sampled/pass@{n}"] = [float(any(d["sample_correct"])) for d in details]
        scores[f"sampled/maj@{n}"] = [float(majority_correct(d["sample_answers"], d["gold"])) for d in details]
    return scores


def read_result(path: str | Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalError(f"{path} is not a readable evaluation result ({type(error).__name__}: {error})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise EvalError(f"{path} is not an evaluation result of this version (no schema {SCHEMA!r})")
    return result


def write_result(result: dict, path: str | Path) -> None:
    """Written beside the target, then renamed: an interrupted write never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(result, indent=1) + "\n")
    staging.replace(path)


def format_table(result: dict, baseline: dict | None = None) -> str:
    """The metrics as a plain-text table (run, and baseline and difference if given; a difference
    over the same questions has its paired bootstrap 95% interval, in points, beside it)."""
    metrics = result["metrics"]
    header = ["metric", "run"] + (["baseline", "difference"] if baseline else [])
    rows = [header]
    for key, value in metrics.items():
        row = [key, _fmt(key, value)]
        if baseline:
            other = baseline["metrics"].get(key)
            row += [_fmt(key, other), _fmt(key, value - other, signed=True) if other is not None and key != "questions" else ""]
        rows.append(row)
    if baseline:
        comparison = result.get("comparison") or compare(result, baseline)  # the bootstrap runs once per result
        for row in rows[1:]:
            interval = comparison.get(f"{row[0]}_difference_interval")
            if interval is not None:
                row[-1] += f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
        rows.append(["efficiency_gain", "", "", f"{100 * comparison['efficiency_gain']:+.1f}%"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _fmt(key: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if key in ("questions", "prompts_truncated"):
        return f"{value:+d}" if signed else str(int(value))
    if key.endswith("response_length"):
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    if key.endswith("confidence"):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"


# ---- command line ----------------------------------------------------------------------------
@dataclass
class EvalOptions:
    """How the command runs; unlike :class:`EvalSettings`, not part of a result's identity."""

    baseline: str | None = None
    """Another model (any form the model argument takes) or an earlier result .json, evaluated alike and compared."""
    batch_size: int = 64
    """Sequences per generation call."""
    output: str | None = None
    """Result .json; null: <run>/eval/<data>-<split>.json for a run, else eval/<model>_<data>-<split>.json."""
    device: str = "auto"
    """cpu, cuda or auto (cuda when there is one)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository (only when you trust it)."""
    sampler: Literal["static_cache", "compiled", "hf_generate"] = "static_cache"
    """static_cache; compiled (its decode step compiled once, for long evaluations); or hf_generate for a model whose code cannot use a static cache (all draw the same tokens)."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise EvalError(f"--batch_size must be positive, got {self.batch_size}")


def build_parser():
    parser = new_parser(
        "evaluate.py",
        "Evaluate a model on math word problems: greedy pass@1, and with --samples n also pass@k, maj@n and confidence.",
    )
    parser.add_argument("model", help="a run folder, a checkpoint (.ckpt) inside one, a Hugging Face folder (or LoRA adapter export), a hub id, or 'embedded'")
    parser.add_class_arguments(EvalSettings, None)
    parser.add_class_arguments(EvalOptions, None)
    return parser


def default_output(model: LoadedModel, source: str, settings: EvalSettings) -> Path:
    tag = f"{Path(settings.data).stem if settings.data != 'synthetic' else 'synthetic'}-{settings.split}".replace("/", "_")
    run_dir = _run_folder_of(Path(source)) if Path(source).exists() else None
    if run_dir is not None:
        return run_dir / "eval" / f"{tag}.json"
    return Path("eval") / f"{Path(source).name.replace('/', '_')}_{tag}.json"


def main(argv: list[str] | None = None) -> int:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    argv = sys.argv[1:] if argv is None else list(argv)

    def body() -> int:
        values = parse_namespace(build_parser(), argv).as_dict()
        settings = EvalSettings(**{f.name: values[f.name] for f in fields(EvalSettings)})
        options = EvalOptions(**{f.name: values[f.name] for f in fields(EvalOptions)})
        settings.validate()
        options.validate()
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if options.device == "auto" else options.device)

        def load(source: str) -> LoadedModel:
            loaded = load_model(source, options.dtype, options.trust_remote_code)
            loaded.policy.to(device)
            loaded.sampler = options.sampler
            return loaded

        model = load(values["model"])
        result = evaluate(model, settings, options.batch_size)
        resolved = EvalSettings(**result["settings"])
        baseline = None
        if options.baseline:
            if options.baseline.endswith(".json"):
                baseline = read_result(options.baseline)
            else:
                baseline = evaluate(load(options.baseline), resolved, options.batch_size)
            result["baseline"] = {k: baseline[k] for k in ("model", "metrics")}
            result["comparison"] = compare(result, baseline)
        output = Path(options.output) if options.output else default_output(model, values["model"], resolved)
        write_result(result, output)
        print(format_table(result, baseline))
        print(f"Written to {output}")
        return 0

    return run_main(body)
