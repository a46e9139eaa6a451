import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Tern  # noqa: E402


@pytest.fixture
def tern_factory(tmp_path):
    started = []

    def make(**overrides):
        d = tmp_path / f"t{len(started)}"
        d.mkdir()
        t = Tern(d, **overrides)
        started.append(t)
        return t

    yield make
    for t in started:
        try:
            t.stop()
        except Exception:
            pass


@pytest.fixture
def tern(tern_factory):
    return tern_factory().start()
