"""How `make test` splits the suite between its pytest-xdist workers (``--dist loadscope --no-loadscope-reorder``,
with the scope of a test defined here: WorkUnitScheduling, installed by tests/conftest.py).

Work units: the multi-process files share one unit, so two of them never run at once (see tests/conftest.py);
every other integration file is one unit, so its module fixtures (an embedded Redis, a local Ray, a served app) are
made once; a unit test starts no process and shares nothing costly, so each is a unit of its own and the short
ones fill the workers' last minutes.

Why not ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist 3.8 passes the group to its scheduler as a
suffix it writes into ``item._nodeid``, which pytest 9 no longer reads (``Node.nodeid`` comes from ``_id``), so
every mark was silently ignored and every test was scheduled on its own -- the multi-process tests ran on both
workers at once (test_service_ray's judge-crash test then killed test_judges_ray's actors). A scheduler that
computes the unit from the node id itself does not depend on that.

Order: longest unit first (LPT, Graham 1969: a list schedule in decreasing order of length finishes within 4/3 of
the best possible makespan), the lengths taken from tests/durations.json, the seconds each test took in a
recorded run (`make test-durations` rewrites it; a test not in it counts DEFAULT_SECONDS). A stale file only
costs balance, never correctness: every test still runs. pytest-split schedules by a recorded-durations file the
same way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath

import pytest

DURATIONS_FILE = Path(__file__).resolve().parents[1] / "durations.json"
DEFAULT_SECONDS = 1.0


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def work_unit(nodeid: str, multi_process_files: frozenset[str]) -> str:
    """The unit of work a test belongs to, from its node id ("tests/unit/test_a.py::test_x[p]")."""
    path = PurePosixPath(nodeid.split("::", 1)[0])
    if path.name in multi_process_files:
        return "multi-process"
    if "unit" in path.parts[-2:-1]:
        return nodeid
    return path.name


def order_longest_first(items: list[pytest.Item], units: dict[str, str], durations: dict[str, float]) -> None:
    """Sort ``items`` in place: units by decreasing recorded length; inside a unit the tests that use the shared
    local Ray (``ray_local``) first, one after another, so it is started once (~5-10 s), then collection order."""
    length: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        unit = units[item.nodeid]
        length[unit] += durations.get(item.nodeid, DEFAULT_SECONDS)
        first.setdefault(unit, i)
    position = {item.nodeid: i for i, item in enumerate(items)}
    items.sort(key=lambda it: (-length[units[it.nodeid]], first[units[it.nodeid]],
                               "ray_local" not in getattr(it, "fixturenames", ()), position[it.nodeid]))


class DurationRecorder:
    """Sums each test's setup + call + teardown seconds and writes them (rounded to 0.1 s) at the end of the
    session: the input of order_longest_first. Registered only when TIEBREAK_RECORD_DURATIONS names the file
    (`make test-durations`); under xdist the reports reach the controller, which writes once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):     # an xdist worker: the controller writes
            return
        data = {k: round(v, 1) for k, v in sorted(self.seconds.items())}
        self.path.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")


def make_scheduler(config: pytest.Config, log: object, multi_process_files: frozenset[str]) -> object:
    """LoadScopeScheduling with work_unit as the scope: a unit's tests go to one worker, units in collection
    order (the workers' collection is sorted by order_longest_first)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, multi_process_files)

    return WorkUnitScheduling(config, log)
