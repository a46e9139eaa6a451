import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Tern  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def tern_factory_in(base, request):
    """Makes `Tern`s in numbered directories under `base`; stops them at the
    end and, when the test failed, prints what each daemon logged."""
    started = []

    def make(**overrides):
        d = base / f"t{len(started)}"
        d.mkdir()
        t = Tern(d, **overrides)
        started.append(t)
        return t

    make.base = base
    yield make
    for t in started:
        code = None
        try:
            code = t.stop()
        except Exception:
            pass
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            # Shown by pytest with the failure: what the daemon said.
            print(f"--- tern log ({t.dir}, exit code {code}) ---")
            print(t.log_text()[-6000:])


@pytest.fixture
def tern_factory(tmp_path, request):
    yield from tern_factory_in(tmp_path, request)


@pytest.fixture
def tern(tern_factory):
    return tern_factory().start()
