"""Randomness: secure by default, seeded only on request, safe across fork()."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

from mechanisms.rng import Randomness, resolve


def _draw_in_child(rand: Randomness, conn: object) -> None:
    conn.send(rand.generator.bit_generator.random_raw(4).tolist())  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform == "win32", reason="fork() is POSIX")
@pytest.mark.parametrize("seeded", [False, True])
def test_fork_rekeys_secure_streams_only(seeded: bool) -> None:
    rand = Randomness.from_seed(7) if seeded else Randomness.secure()
    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_draw_in_child, args=(rand, child_end))
    proc.start()
    child = parent_end.recv()
    proc.join()
    mine = rand.generator.bit_generator.random_raw(4).tolist()
    assert (mine == child) is seeded


def test_resolve_rules() -> None:
    assert resolve(None, None).seeded is False
    assert resolve(None, 3).seeded is True
    r = Randomness.secure()
    assert resolve(r, None) is r
    with pytest.raises(ValueError):
        resolve(r, 3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            Randomness.from_seed(bad)  # type: ignore[arg-type]


def test_integers_below_is_in_range() -> None:
    r = Randomness.from_seed(1)
    highs = np.array([1, 2, 3, 2**40, 2**62])
    for _ in range(100):
        v = r.integers_below(highs)
        assert np.all((v >= 0) & (v < highs))


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("seeded", [False, True])
def test_copies_of_a_secure_stream_are_rekeyed(how: str, seeded: bool) -> None:
    """Same process: a copy of a secure stream gets a fresh key; a seeded copy keeps its state."""
    import copy
    import pickle

    rand = Randomness.from_seed(7) if seeded else Randomness.secure()
    rand.generator.bit_generator.random_raw(3)
    twin = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": lambda r: pickle.loads(pickle.dumps(r)),
    }[how](rand)
    assert twin is not rand and twin.seeded is seeded
    mine = rand.generator.bit_generator.random_raw(4).tolist()
    theirs = twin.generator.bit_generator.random_raw(4).tolist()
    assert (mine == theirs) is seeded
