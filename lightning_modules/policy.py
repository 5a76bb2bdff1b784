"""The policy: a Hugging Face causal LM plus optional heads, loaded one way for every model.

The embedded default is written to disk with ``save_pretrained`` and read back through
``from_pretrained``, the same path a hub id or a local folder takes.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from datamodules.config import ConfigError
from lightning_modules.config import EmbeddedModelConfig, LoraConfig, ModelConfig
from lightning_modules.sharding import is_sharded

EMBEDDED = "embedded"
# Bump when the tokenizer corpus or the architecture recipe changes, so old builds are not reused.
EMBEDDED_RECIPE = 1


def embedded_model_dir(config: ModelConfig) -> Path:
    key = json.dumps({"recipe": EMBEDDED_RECIPE, **asdict(config.embedded)}, sort_keys=True)
    return Path(config.cache_dir) / f"embedded-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@contextmanager
def staged_folder(folder: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh folder beside ``folder``; when the block succeeds, rename it into place.

    A write that dies half way never leaves a folder that looks complete, nor destroys a
    good one. With ``replace``, an existing ``folder`` is swapped out; without, the rename
    fails if another process got there first.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        yield staging
        if replace and folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_embedded_model(config: EmbeddedModelConfig, folder: Path) -> None:
    """Build the tiny Llama and its tokenizer from scratch and save both to ``folder``."""
    from datamodules.prompts import tokenizer_corpus
    from datamodules.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=config.vocab_size)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(config.init_seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with staged_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


# ---- a .gguf file as a model source -------------------------------------------------------
# transformers reads a GGUF file (with the gguf and accelerate packages) and de-quantises it to
# full-precision weights, which takes tens of seconds and leaves a model that refuses
# save_pretrained. gguf_folder does that once per file: the weights go into a plain model built
# from the same config (the quantisation note removed), written with the tokenizer to a staging
# folder and renamed into the cache, so a cached folder is always whole and later runs load it
# in about a second.
GGUF_NEEDS = ("gguf", "accelerate")


def gguf_path(name_or_path: str, gguf_file: str | None) -> Path | None:
    """The GGUF file a model source names (a ``.gguf`` path, or a folder plus ``gguf_file``); None if it names none."""
    if gguf_file:
        return Path(name_or_path) / gguf_file
    if name_or_path.lower().endswith(".gguf"):
        return Path(name_or_path)
    return None


def fingerprint(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256: a changed file is converted again."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_folder(path: Path, cache_dir: Path) -> Path:
    """The Hugging Face folder converted from the GGUF file at ``path`` (converted now if the cache lacks it)."""
    if not path.is_file():
        raise ConfigError(f"GGUF model file {path} does not exist")
    missing = [name for name in GGUF_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"reading the GGUF file {path} needs the {' and '.join(missing)} package(s): pip install {' '.join(GGUF_NEEDS)}")
    target = cache_dir / "gguf" / f"{path.stem}-{fingerprint(path)}"
    if (target / "config.json").is_file():
        return target
    try:
        with staged_folder(target) as staging:
            convert_gguf(path, staging)
    except OSError:
        if not (target / "config.json").is_file():  # not another process's finished copy
            raise
    return target


def convert_gguf(path: Path, out: Path) -> None:
    """De-quantise the GGUF file into a plain full-precision model and its tokenizer under ``out``."""
    try:
        quantised = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as error:  # a truncated or foreign file fails deep inside the reader
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path} is not a readable GGUF model file ({reason[:160]})") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model_path(config: ModelConfig) -> str:
    """Return what ``from_pretrained`` should read, building the embedded model or converting a
    GGUF file if needed."""
    gguf = gguf_path(config.name_or_path, config.gguf_file)
    if gguf is not None:
        return str(gguf_folder(gguf, Path(config.cache_dir)))
    if config.name_or_path != EMBEDDED:
        return config.name_or_path
    folder = embedded_model_dir(config)
    if not (folder / "config.json").is_file():
        try:
            build_embedded_model(config.embedded, folder)
        except OSError:
            # Another process (a DDP rank) finished the same build first.
            if not (folder / "config.json").is_file():
                raise
    return str(folder)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Common for Llama-style hub models; the pad id is always masked out, so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_lora(lm: PreTrainedModel, lora: LoraConfig) -> nn.Module:
    """``lm`` wrapped by peft with LoRA adapters: its own weights frozen, the adapters trainable."""
    import peft  # imported only when asked for: a run without LoRA does not need it

    adapters = peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha or 2 * lora.r,
        lora_dropout=lora.dropout,
        target_modules=lora.targets(),
    )
    return peft.get_peft_model(lm, adapters)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted from its row's first real token (padding at 0), so that a
    left-padded row sees the positions an unpadded one would. Scoring and both samplers use it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Policy(nn.Module):
    """A causal LM with named heads on its last hidden state (value, CoT embedding, ...)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.heads = nn.ModuleDict()

    @classmethod
    def from_pretrained(cls, path: str, config: ModelConfig) -> "Policy":
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, config.dtype), trust_remote_code=config.trust_remote_code
        )
        if config.gradient_checkpointing:
            lm.gradient_checkpointing_enable()
            lm.config.use_cache = False
        if config.lora.r > 0:
            # Wrapped after checkpointing is on, so that peft makes the frozen embeddings' output
            # require grad: reentrant checkpointing would otherwise cut the adapters off their gradient.
            lm = add_lora(lm, config.lora)
        lm.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds
        return cls(lm)

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def has_adapters(self) -> bool:
        """Whether ``lm`` carries LoRA adapters (a peft model)."""
        peft = sys.modules.get("peft")  # never imported, then no peft model can exist
        return peft is not None and isinstance(self.lm, peft.PeftModel)

    def merged_lm(self) -> PreTrainedModel:
        """The language model as a plain Hugging Face model: with LoRA, a copy with the adapters
        folded into its base weights.

        A copy, not ``merge_adapter()`` then ``unmerge_adapter()`` in place: adding the update and
        subtracting it again does not restore the base weights bit for bit in floating point, and
        the policy goes on (the final test pass, a resumed run) with the weights it trained. The
        price is one more set of weights while the copy lives.
        """
        return copy.deepcopy(self.lm).merge_and_unload() if self.has_adapters else self.lm

    def merge_adapters(self) -> None:
        """Fold the LoRA adapters into the base weights for good (inference only: nothing trains after)."""
        if self.has_adapters:
            self.lm = self.lm.merge_and_unload()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False, logits_to_keep: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, T, V]`` and, if asked, the last hidden states ``[B, T, H]``.

        ``logits_to_keep > 0`` computes logits for the last that many positions only (the
        vocabulary projection of prompt positions is wasted work when scoring responses).

        Positions are counted from the first real token (:func:`position_ids`), as the
        samplers count them.
        """
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=return_hidden,
            use_cache=False,
            **({"logits_to_keep": logits_to_keep} if logits_to_keep else {}),
        )
        return out.logits, (out.hidden_states[-1] if return_hidden else None)

    def can_share_prompts(self) -> bool:
        """Whether :meth:`forward_shared_prompts` applies: it carries the prompts' keys and
        values from one forward pass to the next, which activation checkpointing turns off.
        Nor under FSDP2, where every forward pass is a round of collectives: ranks whose rows
        share prompts differently would run different numbers of them and wait forever."""
        if is_sharded(self.lm):
            return False
        checkpointing = getattr(self.lm, "is_activation_checkpointing", None)  # the newer name of is_gradient_checkpointing
        return not (checkpointing if checkpointing is not None else getattr(self.lm, "is_gradient_checkpointing", False))

    def forward_shared_prompts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int, share: int, return_hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What ``forward(..., logits_to_keep=T + 1)`` returns for the last ``T`` tokens of
        every row (``T = input_ids.size(1) - prompt_length``), for rows that come in runs of
        ``share`` with one prompt each (:func:`~lightning_modules.decoder.shared_rows`).

        Each prompt runs once; its keys and values are repeated for its rows, which then run
        their own tokens on top. Gradients from every row reach the prompt's one pass (the
        repeat sums them), so the loss and its gradient are those of the full pass, for about
        ``(P / share + T) / (P + T)`` of its work (a shared-prefix forward; Prefix Grouper,
        arXiv 2506.05433, does the same for GRPO).
        """
        from transformers import DynamicCache

        positions = position_ids(attention_mask)
        cache = DynamicCache(config=self.lm.config)
        prompt = self.lm(
            input_ids=input_ids[::share, :prompt_length], attention_mask=attention_mask[::share, :prompt_length],
            position_ids=positions[::share, :prompt_length], past_key_values=cache, use_cache=True,
            output_hidden_states=return_hidden, logits_to_keep=1,
        )
        cache.batch_repeat_interleave(share)
        rest = self.lm(
            input_ids=input_ids[:, prompt_length:], attention_mask=attention_mask, position_ids=positions[:, prompt_length:],
            past_key_values=cache, use_cache=True, output_hidden_states=return_hidden,
        )
        logits = torch.cat([prompt.logits[:, -1:].repeat_interleave(share, 0), rest.logits], dim=1)
        if not return_hidden:
            return logits, None
        states = torch.cat([prompt.hidden_states[-1][:, -1:].repeat_interleave(share, 0), rest.hidden_states[-1]], dim=1)
        return logits, states
