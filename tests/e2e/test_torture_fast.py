"""The fast subset of the crash-point torture (tests/torture/crashpoints.py;
`make torture` runs the full sweep): the commit's syscall order for a lone
message and a group commit, a sample of crash points (every
FAST_EVERY-th, at a random offset printed with any failure) of each
scenario, and a short kill -9 soak. Needs strace with fault injection; fails
(never skips) without it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "torture"))
import crashpoints  # noqa: E402

# One crash point in this many (the full sweep tries them all).
FAST_EVERY = 12
FAST_SOAK_ROUNDS = 10


def test_strace_can_inject():
    crashpoints.need_strace()


@pytest.mark.parametrize("group", [False, True], ids=["lone", "group"])
def test_commit_order(tmp_path, group):
    """250 only after data and directory entry are durable (the order
    checked is documented in crashpoints.trace_order)."""
    ok, descs = crashpoints.trace_order(tmp_path, group=group)
    print("\n".join(descs))
    assert ok, descs


@pytest.mark.parametrize("name", sorted(crashpoints.SCENARIOS))
def test_crash_points_sample(tmp_path, name):
    lines = []
    fig = crashpoints.sweep(crashpoints.SCENARIOS[name], tmp_path, every=FAST_EVERY, log=lines.append)
    print("\n".join(lines))
    print(fig)
    assert fig["points"] > 0 and fig["kills"] > 0, fig
    assert fig["lost"] == 0 and not fig["violations"], "\n".join(fig["violations"])


def test_kill9_soak_short(tmp_path):
    fig = crashpoints.soak(tmp_path, rounds=FAST_SOAK_ROUNDS, clients=3)
    print(fig)
    assert fig["acked"] > 0, fig
    assert fig["lost"] == 0 and fig["bad_dups"] == 0, fig
    assert fig["tmp_left"] == 0 and fig["corrupt_acked"] == 0, fig
