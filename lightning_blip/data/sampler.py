"""A DistributedSampler that gives every sample its own augmentation seed and can skip ahead on resume,
and the DataLoader that Lightning counts as resumable."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, index)``, equal in every process."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` order, yielding ``(index, sample_seed(seed, epoch, index))``.

    With ``yield_seeds=False`` it yields plain indices. ``skip(n)`` drops the first ``n`` indices of
    this rank's share from the next iteration of the current epoch, to resume mid-epoch.

    ``len()`` stays the full share (``num_samples``) while skipping: Lightning resumes its batch
    counter at the number of batches already done and ends the epoch when that counter reaches
    ``len(dataloader)``, so a shortened length would end the resumed epoch early.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        yield_seeds: bool = True,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.yield_seeds = yield_seeds
        self._skip = 0

    def skip(self, num_samples: int) -> None:
        """Skip the first ``num_samples`` of this rank's share in the next iteration of this epoch."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self._skip = num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (permutation and seeds); moving to another epoch cancels a pending skip."""
        if epoch != self.epoch:
            self._skip = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        skip, self._skip = self._skip, 0
        indices = list(super().__iter__())[skip:]
        if not self.yield_seeds:
            return iter(indices)
        seed, epoch = self.seed, self.epoch
        return ((index, sample_seed(seed, epoch, index)) for index in indices)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with the ``state_dict`` / ``load_state_dict`` that Lightning looks for to call a
    loader resumable mid-epoch (otherwise it warns that a mid-epoch resume is unreliable).

    The position is not the loader's own state: the DataModule saves it (``ImageTextDataModule.
    state_dict``) and, after a restore, builds the loader already at that point of the epoch with a
    skipping :class:`ResumableDistributedSampler`. So there is nothing here to save or load.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass
