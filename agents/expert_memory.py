"""The expert-labelled states of past rollouts, kept for expert-guided PPO.

One PPO rollout holds a few hundred decisions, and the states that matter most (a slow
car ahead, a car beside the ego) are a fraction of a percent of them: the expert phase of
:class:`agents.guided_ppo.GuidedPPO` sees each one once and then never again. DAgger
aggregates instead: every labelled state stays in the dataset. :class:`ExpertMemory`
is that dataset for PPO, a first-in-first-out ring of the last ``capacity`` labelled
observations, from which each expert minibatch draws as many states as it takes from
the current rollout.

Observations are kept as the envs produced them, before :class:`VecNormalize`, and are
normalised with the statistics of the moment they are drawn, so old states reach the
policy the way new ones do even while the statistics move.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray


class ExpertMemory:
    """A ring of the last ``capacity`` observations (a dict of arrays, one row each).

    Args:
        capacity: States kept [decisions]; when full, the oldest are overwritten.

    Raises:
        ValueError: ``capacity`` is not positive.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an expert memory needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self.arrays: dict[str, NDArray[np.float32]] = {}
        #: Rows filled so far (at most ``capacity``).
        self.size = 0
        #: Row the next state is written to.
        self.position = 0

    def add(self, observations: Mapping[str, NDArray[np.floating]]) -> None:
        """Append a batch of states, ``{key: (n, *shape)}``, overwriting the oldest when
        the memory is full.

        Raises:
            ValueError: The keys or shapes differ from those already stored.
        """
        n = len(next(iter(observations.values())))
        if not self.arrays:
            self.arrays = {k: np.zeros((self.capacity, *v.shape[1:]), np.float32)
                           for k, v in observations.items()}
        if set(observations) != set(self.arrays):
            raise ValueError(f"expert memory holds keys {sorted(self.arrays)}, got "
                             f"{sorted(observations)}")
        for key, value in observations.items():
            if value.shape != (n, *self.arrays[key].shape[1:]):
                raise ValueError(f"expert memory key '{key}' holds rows of shape "
                                 f"{self.arrays[key].shape[1:]}, got {value.shape}")
        rows = (self.position + np.arange(n)) % self.capacity
        for key, value in observations.items():
            # With more new rows than room, only the last `capacity` survive, in order.
            self.arrays[key][rows[-self.capacity:]] = value[-self.capacity:]
        self.position = int((self.position + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, NDArray[np.float32]]:
        """``n`` states drawn uniformly with replacement.

        Raises:
            ValueError: The memory is empty.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty expert memory")
        rows = rng.integers(0, self.size, size=n)
        return {k: v[rows] for k, v in self.arrays.items()}

    def state(self) -> tuple[dict[str, NDArray[np.float32]], dict[str, int]]:
        """The filled rows and the counters, for a resumable checkpoint."""
        return ({k: v[:self.size].copy() for k, v in self.arrays.items()},
                {"size": self.size, "position": self.position, "capacity": self.capacity})

    def load(self, arrays: Mapping[str, NDArray[np.floating]], counters: Mapping[str, int]
             ) -> None:
        """Restore :meth:`state`'s output.

        Raises:
            ValueError: The checkpoint's capacity differs from this memory's.
        """
        if int(counters["capacity"]) != self.capacity:
            raise ValueError(f"the checkpoint's expert memory holds {counters['capacity']} "
                             f"states, this run's {self.capacity}")
        size = int(counters["size"])
        self.arrays = {k: np.zeros((self.capacity, *np.shape(v)[1:]), np.float32)
                       for k, v in arrays.items()}
        for key, value in arrays.items():
            self.arrays[key][:size] = value
        self.size, self.position = size, int(counters["position"])


__all__ = ["ExpertMemory"]
