"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the policy, its heads and the reference
sharded over the ranks, gathered whole for sampling, and checkpointed shard by shard.

``trainer.strategy fsdp`` runs :class:`ShardedStrategy`, Lightning's ``ModelParallelStrategy``
whose checkpoints are written atomically. The module shards itself in ``configure_model``
(:func:`shard_policy`):

- every decoder layer is one shard unit (the model's ``_no_split_modules``, as Hugging Face
  names them), then every head, then the language model's root (embeddings, final norm,
  vocabulary projection);
- each rank keeps 1/N of every weight, gradient and AdamW moment; a unit's weights are
  gathered before its forward and freed after it, and its gradients reduce-scattered in the
  backward;
- under ``bf16-mixed`` the gathered weights are bfloat16 and gradients are reduced in
  float32 (the master weights and AdamW stay float32).

Sampling and scoring run many forward passes whose number differs between ranks (responses
end at different lengths, DAPO draws further rounds on some ranks only), so they run inside
:func:`gathered`: every unit's weights are gathered once, the passes need no collective, and
the shards return when the block ends. Validation does the same for a whole epoch. The
frozen reference is not gathered whole: it scores each rollout in one forward pass on every
rank, gathering one layer at a time like the update does.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

SHARDED = "fsdp"
"""The ``trainer.strategy`` value that runs FSDP2."""

WORLD_SIZE_KEY = "world_size"
"""Checkpoint key: the number of processes that wrote it (a resume must use as many)."""


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a Hugging Face causal LM (or of the model under a peft wrapper)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} names no decoder layer class (_no_split_modules), so it cannot be sharded per layer")
    return layers


def shard_policy(policy: nn.Module, mesh, bf16: bool = False) -> None:
    """Shard ``policy`` (a :class:`~lightning_modules.policy.Policy`) in place over ``mesh``:
    each decoder layer, each head, then the LM root. ``bf16``: gather weights in bfloat16 and
    reduce gradients in float32."""
    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in decoder_layers(policy.lm):
        fully_shard(layer, mesh=mesh, mp_policy=mixed, reshard_after_forward=True)
    for head in policy.heads.values():
        fully_shard(head, mesh=mesh, mp_policy=mixed, reshard_after_forward=True)
    fully_shard(policy.lm, mesh=mesh, mp_policy=mixed, reshard_after_forward=True)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in module.modules())


@contextmanager
def gathered(*modules: nn.Module) -> Iterator[None]:
    """Inside the block every FSDP unit of ``modules`` holds its full weights, so forward
    passes run without collectives and ranks may run different numbers of them. Every rank
    must enter and leave the block together (the gathering itself is a collective). A no-op
    for modules that are not sharded."""
    units = [m for module in modules for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a sharded (or partially reduced) tensor on every rank; any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded module, on CPU, on rank 0 (empty on the others).
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 through ``configure_model``, with checkpoints that a crash cannot leave half
    written: every rank writes its shards into a staging folder beside the target, which rank
    0 renames into place once all have finished. Overwriting a checkpoint (``last.ckpt``)
    moves the previous one aside first and deletes it after; if a process dies between the
    two renames, :func:`recover_checkpoint` puts the previous one back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=True, **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        staging, previous = staging_names(path)
        if self.global_rank == 0:
            recover_checkpoint(path)  # never delete the only whole copy
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier()
        if self.global_rank == 0:
            if path.exists():
                os.replace(path, previous)
            os.replace(staging, path)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier()

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def staging_names(path: Path) -> tuple[Path, Path]:
    """Where a sharded checkpoint at ``path`` is written before its rename, and where the one it replaces waits."""
    return path.with_name(f".{path.name}.staging"), path.with_name(f".{path.name}.previous")


def recover_checkpoint(path: Path) -> None:
    """If a process died after moving a sharded checkpoint aside and before renaming its
    successor into place, put the previous one back."""
    _, previous = staging_names(path)
    if not path.exists() and previous.is_dir():
        try:
            os.replace(previous, path)
        except FileNotFoundError:  # another process of the same launch put it back first
            pass


META = "meta.pt"
"""Lightning's file of a sharded checkpoint that holds everything but the weights and optimizer states."""


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a sharded checkpoint's index (``.metadata``, which torch writes with pickle)
    refusing anything but the index's own classes, dtypes and paths: a checkpoint from
    elsewhere cannot run code when it is read."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or module == "torch.distributed.checkpoint.metadata":
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def _safe_reader(path: Path):
    """A reader of the sharded checkpoint at ``path`` whose index is read by :class:`_MetadataUnpickler`
    (the tensors and other values are read by torch with ``weights_only``)."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(path / ".metadata", "rb") as file:
                metadata = _MetadataUnpickler(file).load()
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def sharded_checkpoint_meta(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """A sharded checkpoint's metadata (global step, loop, scheduler and data states, ...) and
    the whole shape of every weight, read without loading a weight."""
    meta = torch.load(path / META, map_location="cpu", weights_only=True)
    prefix = "state_dict."
    shapes = {
        key[len(prefix):]: tuple(item.size)
        for key, item in _safe_reader(path).read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and hasattr(item, "size")
    }
    return meta, shapes


def load_sharded_checkpoint(path: Path, weights_only: bool = False) -> dict[str, Any]:
    """A sharded checkpoint as one dict in the layout of a single-file one (``state_dict``,
    ``optimizer_states`` unless ``weights_only``, and the metadata), read whole on this process
    without any process group."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        tensors = _load_state_dict_from_keys({"state_dict"} if weights_only else None, storage_reader=_safe_reader(path))
    checkpoint = torch.load(path / META, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = tensors.pop("state_dict")
    if not weights_only:
        checkpoint["optimizer_states"] = [tensors[f"optimizer_{i}"] for i in range(len(tensors))]
    return checkpoint
