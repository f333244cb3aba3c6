"""The order `make test` hands work to its xdist workers (tests/support/schedule.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from support import schedule

MP = frozenset({"test_replicas.py", "test_service_ray.py"})


@dataclass
class Item:
    nodeid: str
    fixturenames: tuple[str, ...] = ()

    @property
    def fspath(self) -> str:
        return "/repo/" + self.nodeid.split("::")[0]


def _ordered(ids, durations, fixtures=None):
    items = [Item(i, (fixtures or {}).get(i, ())) for i in ids]
    units = {it.nodeid: schedule.work_unit(it, MP) for it in items}
    schedule.order_longest_first(items, units, durations)
    return [it.nodeid for it in items], units


def test_units_are_one_per_unit_test_one_per_integration_file_and_one_multi_process_group():
    ids = ["tests/unit/test_a.py::test_x[p@1]", "tests/unit/test_a.py::test_y",
           "tests/integration/test_http.py::test_1", "tests/integration/test_http.py::test_2",
           "tests/integration/test_replicas.py::test_r", "tests/integration/test_service_ray.py::test_s"]
    _, units = _ordered(ids, {})
    assert units[ids[0]] == "tests/unit/test_a.py::test_x[p_1]"     # no "@": xdist splits the group off there
    assert units[ids[0]] != units[ids[1]]
    assert units[ids[2]] == units[ids[3]] == "test_http.py"
    assert units[ids[4]] == units[ids[5]] == "multi-process"


def test_longest_unit_first_and_a_units_tests_stay_together_in_order():
    ids = ["tests/unit/test_a.py::test_short", "tests/integration/test_http.py::test_1",
           "tests/unit/test_a.py::test_long", "tests/integration/test_http.py::test_2",
           "tests/unit/test_a.py::test_unknown"]
    durations = {ids[0]: 0.2, ids[1]: 3.0, ids[2]: 9.0, ids[3]: 4.0}
    order, _ = _ordered(ids, durations)
    # test_long (9 s), then test_http.py (3 + 4 s, its tests together and in order), then the 1 s default, then 0.2 s
    assert order == [ids[2], ids[1], ids[3], ids[4], ids[0]]


def test_ray_tests_of_a_unit_run_one_after_another():
    ids = ["tests/integration/test_replicas.py::test_r", "tests/integration/test_service_ray.py::test_a",
           "tests/integration/test_replicas.py::test_q", "tests/integration/test_service_ray.py::test_b"]
    order, _ = _ordered(ids, {}, {ids[1]: ("ray_local",), ids[3]: ("ray_local", "tmp_path")})
    assert order == [ids[1], ids[3], ids[0], ids[2]]


def test_durations_file_round_trip_and_a_broken_file_is_ignored(tmp_path):
    rec = schedule.DurationRecorder(tmp_path / "d.json")

    @dataclass
    class Report:
        nodeid: str
        duration: float

    for phase in (0.04, 1.23, 0.01):
        rec.pytest_runtest_logreport(Report("tests/unit/test_a.py::test_x", phase))

    class Config:
        pass

    class Session:
        config = Config()

    rec.pytest_sessionfinish(Session())
    assert schedule.load_durations(tmp_path / "d.json") == {"tests/unit/test_a.py::test_x": 1.3}
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    assert schedule.load_durations(tmp_path / "bad.json") == {}
    assert schedule.load_durations(tmp_path / "missing.json") == {}


def test_the_recorded_durations_name_tests_that_exist():
    """A stale file only costs balance; one that names no existing test would cost all of it."""
    from pathlib import Path

    root = Path(schedule.__file__).resolve().parents[2]
    names = list(schedule.load_durations())
    assert len(names) > 100
    files = {n.split("::")[0] for n in names}
    assert sum((root / f).exists() for f in files) >= 0.9 * len(files)
