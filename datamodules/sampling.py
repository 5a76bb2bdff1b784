"""A batch sampler that shards by rank, groups similar lengths, and resumes at an exact batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled passes over the data, cut into global batches, ``num_batches`` in all.

    The item stream is one ``randperm`` per pass (seeded by ``seed + pass``). Every
    ``bucket_batches`` global batches' worth of the stream is sorted by length and cut into
    global batches, whose order is shuffled again: a batch holds similar lengths, so
    little compute goes to padding. Rank ``r`` takes items ``r * B ... (r + 1) * B`` of
    each global batch. Batch ``b`` depends only on the seed and ``b``, so a run resumed at
    ``start_batch()`` sees exactly what an uninterrupted run would have seen.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_batch: Callable[[], int],
        num_batches: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError("cannot sample batches from an empty data set")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_batch, self.num_batches = start_batch, num_batches
        self.rank, self.world_size = rank, world_size
        self.lengths = torch.as_tensor(lengths) if lengths is not None else None
        self.bucket_batches = bucket_batches
        self._pass: tuple[int, torch.Tensor] | None = None
        self._group: tuple[int, list[list[int]]] | None = None

    def _item(self, stream_index: int) -> int:
        pass_index, offset = divmod(stream_index, self.num_items)
        if self._pass is None or self._pass[0] != pass_index:
            generator = torch.Generator().manual_seed(self.seed + pass_index)
            self._pass = (pass_index, torch.randperm(self.num_items, generator=generator))
        return int(self._pass[1][offset])

    def _global_batch(self, batch_index: int) -> list[int]:
        group, slot = divmod(batch_index, self.bucket_batches)
        if self._group is None or self._group[0] != group:
            size = self.batch_size * self.world_size
            start = group * self.bucket_batches * size
            items = [self._item(i) for i in range(start, start + self.bucket_batches * size)]
            if self.lengths is not None:
                items.sort(key=lambda i: int(self.lengths[i]))  # stable: ties keep the shuffled order
            batches = [items[k * size : (k + 1) * size] for k in range(self.bucket_batches)]
            order = torch.randperm(self.bucket_batches, generator=torch.Generator().manual_seed(self.seed * 7919 + group))
            self._group = (group, [batches[int(k)] for k in order])
        return self._group[1][slot]

    def __iter__(self) -> Iterator[list[int]]:
        for batch_index in range(self.start_batch(), self.num_batches):
            batch = self._global_batch(batch_index)
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        # The whole run is one Lightning epoch; a resumed run iterates only what is left.
        return self.num_batches
