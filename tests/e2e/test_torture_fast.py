"""The fast subset of the crash-point torture (tests/torture/crashpoints.py;
`make torture` runs the full sweep): the commit's syscall order for a lone
message and a group commit, a sample of crash points (every
FAST_EVERY-th, at a random offset; the failing syscall and N are named) of
each scenario, a short kill -9 soak, and a deterministic regression test
for a defect the torture found (a drop imported twice; the other one,
queue IDs reused after a restart, has its regression test in
tests/e2e/test_restarts.py).
Needs strace with fault injection; fails (never skips) without it."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "torture"))
import crashpoints  # noqa: E402

# One crash point in this many (the full sweep tries them all).
FAST_EVERY = 12
FAST_SOAK_ROUNDS = 10
# Seconds between a soak client's messages (the full soak sends flat out).
FAST_SOAK_PACE = 0.03


def test_strace_can_inject():
    crashpoints.need_strace()


@pytest.mark.parametrize("group", [False, True], ids=["lone", "group"])
def test_commit_order(tmp_path, group):
    """250 only after data and directory entry are durable (the order
    checked is documented in crashpoints.trace_order)."""
    ok, descs = crashpoints.trace_order(tmp_path, group=group)
    print("\n".join(descs))
    assert ok, descs


def test_drop_claim_is_synced_before_the_commit(tmp_path):
    """Regression: the claim of a sendmail drop (drop/NAME -> drop/NAME+ID)
    was not synced; a power loss after the commit could bring the drop
    back under its old name, imported again (a duplicate)."""
    ok, desc = crashpoints.drop_claim_order(tmp_path)
    print(desc)
    assert ok, desc


@pytest.mark.parametrize("name", sorted(crashpoints.SCENARIOS))
def test_crash_points_sample(tmp_path, name):
    """No loss and no duplicate outside the allowed window at a sample of
    crash points."""
    lines = []
    fig = crashpoints.sweep(crashpoints.SCENARIOS[name], tmp_path, every=FAST_EVERY, log=lines.append)
    print("\n".join(lines))
    print({k: v for k, v in fig.items() if k != "violations"})
    assert fig["points"] > 0 and fig["kills"] > 0, fig
    assert fig["lost"] == 0 and not fig["violations"], "\n".join(fig["violations"])


def test_kill9_soak_short(tmp_path):
    fig = crashpoints.soak(tmp_path, rounds=FAST_SOAK_ROUNDS, clients=3, pace=FAST_SOAK_PACE)
    print(fig)
    assert fig["acked"] > 0, fig
    assert fig["lost"] == 0 and fig["corrupt_acked"] == 0, fig
    assert fig["bad_dups"] == 0 and fig["tmp_left"] == 0, fig


def test_drop_import_killed_before_unlink_is_delivered_once(tmp_path):
    """Regression: a drop was committed into msg/ and only then unlinked, so
    a kill between the two imported it again at the next start (found by
    the sendmail scenario). Now the drop is claimed as NAME+ID first.

    The kill: at the Nth unlink/unlinkat of a daemon importing one drop at
    start, for the first N that leaves the message committed in msg/ and
    the drop still in drop/ (whatever the file names)."""
    crashpoints.need_strace()
    for n in range(1, 16):
        d = crashpoints.Daemon(tmp_path / f"n{n}")
        token = crashpoints.new_token()
        assert crashpoints.sendmail_drop(d, "dave", token)  # daemon down: a drop file
        d.start(strace=["-o", "/dev/null", "-e", "trace=unlink,unlinkat",
                        "-e", f"inject=unlink,unlinkat:signal=SIGKILL:when={n}"], wait=False)
        crashpoints.wait_until(lambda: not d.alive() or d.maildir_tokens(), 10)
        if d.alive():
            d.stop()
            continue
        d.proc.wait()
        d.proc = None
        if d.spool_files("msg") and d.spool_files("drop"):
            break
    else:
        pytest.fail("no kill left a committed message with its drop file")
    # A later second: with second-based IDs the re-import cannot reuse the ID.
    time.sleep(1.1)
    d.start()
    try:
        crashpoints.wait_until(lambda: not d.spool_files("msg") and not d.spool_files("drop")
                               and d.maildir_tokens(), 10)
        time.sleep(0.3)
    finally:
        d.stop()
    assert d.maildir_tokens() == {(token, "dave"): 1}, f"killed at unlink #{n}"
