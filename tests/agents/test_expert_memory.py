"""The expert memory: a first-in-first-out ring of labelled states."""

from __future__ import annotations

import numpy as np
import pytest

from agents.expert_memory import ExpertMemory


def _rows(first: int, n: int) -> dict[str, np.ndarray]:
    ids = np.arange(first, first + n, dtype=np.float32)
    return {"x": np.stack([ids, -ids], axis=1), "label": ids[:, None]}


def test_it_keeps_the_last_capacity_states_in_a_ring() -> None:
    memory = ExpertMemory(5)
    memory.add(_rows(0, 3))
    assert (memory.size, memory.position) == (3, 3)
    memory.add(_rows(3, 4))  # rows 3..6: 5 and 6 overwrite 0 and 1
    assert (memory.size, memory.position) == (5, 2)
    assert memory.arrays["label"][:, 0].tolist() == [5, 6, 2, 3, 4]
    assert memory.arrays["x"][:, 1].tolist() == [-5, -6, -2, -3, -4]
    memory.add(_rows(7, 12))  # more than it holds: only 14..18 survive
    assert sorted(memory.arrays["label"][:, 0].tolist()) == [14, 15, 16, 17, 18]
    assert memory.position == (2 + 12) % 5


def test_samples_are_whole_rows_from_the_filled_part() -> None:
    memory = ExpertMemory(100)
    memory.add(_rows(0, 10))
    drawn = memory.sample(np.random.default_rng(0), 1000)
    assert drawn["x"].shape == (1000, 2) and drawn["label"].shape == (1000, 1)
    assert set(drawn["label"][:, 0].tolist()) == set(range(10))  # never an empty row
    np.testing.assert_array_equal(drawn["x"][:, 0], drawn["label"][:, 0])
    again = memory.sample(np.random.default_rng(0), 1000)
    np.testing.assert_array_equal(drawn["x"], again["x"])


def test_state_and_load_round_trip() -> None:
    memory = ExpertMemory(4)
    memory.add(_rows(0, 6))
    arrays, counters = memory.state()
    restored = ExpertMemory(4)
    restored.load(arrays, counters)
    assert (restored.size, restored.position) == (memory.size, memory.position)
    for key in memory.arrays:
        np.testing.assert_array_equal(restored.arrays[key], memory.arrays[key])
    partial = ExpertMemory(4)
    partial.add(_rows(0, 2))
    arrays, counters = partial.state()
    other = ExpertMemory(4)
    other.load(arrays, counters)
    other.add(_rows(2, 1))
    assert other.arrays["label"][:3, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="the checkpoint's expert memory holds 4 states, "
                                         "this run's 8"):
        ExpertMemory(8).load(arrays, counters)


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity >= 1, got 0"):
        ExpertMemory(0)
    memory = ExpertMemory(3)
    with pytest.raises(ValueError, match="cannot sample from an empty expert memory"):
        memory.sample(np.random.default_rng(0), 1)
    memory.add(_rows(0, 2))
    with pytest.raises(ValueError, match=r"holds keys \['label', 'x'\], got \['x'\]"):
        memory.add({"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match="key 'x' holds rows of shape"):
        memory.add({"x": np.zeros((1, 3), np.float32), "label": np.zeros((1, 1), np.float32)})
