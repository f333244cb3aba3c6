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
    units = {it.nodeid: schedule.work_unit(it.nodeid, MP) for it in items}
    schedule.order_longest_first(items, units, durations)
    return [it.nodeid for it in items], units


def test_units_are_one_per_unit_test_one_per_integration_file_and_one_multi_process_group():
    ids = ["tests/unit/test_a.py::test_x[p@1]", "tests/unit/test_a.py::test_y",
           "tests/integration/test_http.py::test_1", "tests/integration/test_http.py::test_2",
           "tests/integration/test_replicas.py::test_r", "tests/integration/test_service_ray.py::test_s"]
    _, units = _ordered(ids, {})
    assert units[ids[0]] == ids[0] and units[ids[1]] == ids[1]
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


def test_the_multi_process_files_run_on_one_worker_under_make_tests_options(tmp_path):
    """A real pytest-xdist run with two workers and the project's scheduler: the tests of two multi-process files
    all run on one worker, one after another (they never overlap), while a unit test may go to the other.
    (With ``--dist loadgroup`` and xdist_group marks under pytest 9 they were spread over both workers.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    support = Path(schedule.__file__).resolve().parent
    (tmp_path / "conftest.py").write_text(
        "from support import schedule\n"
        "MP = frozenset({'test_replicas.py', 'test_webhook_outbox.py'})\n"
        "def pytest_collection_modifyitems(config, items):\n"
        "    units = {i.nodeid: schedule.work_unit(i.nodeid, MP) for i in items}\n"
        "    schedule.order_longest_first(items, units, {})\n"
        "def pytest_xdist_make_scheduler(config, log):\n"
        "    return schedule.make_scheduler(config, log, MP)\n")
    body = ("import os, time\n"
            "def _log(tag):\n"
            "    with open(os.environ['SCHED_LOG'], 'a') as f:\n"
            "        f.write(f\"{os.environ['PYTEST_XDIST_WORKER']} {tag} {time.monotonic()}\\n\")\n")
    for name in ("test_replicas", "test_webhook_outbox"):
        d = tmp_path / "integration"
        d.mkdir(exist_ok=True)
        tests = "".join(f"def test_{k}():\n    _log('start')\n    time.sleep(0.3)\n    _log('end')\n" for k in range(3))
        (d / f"{name}.py").write_text(body + tests)
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "test_fast.py").write_text("def test_a():\n    pass\n")
    log = tmp_path / "sched.log"
    env = dict(os.environ, SCHED_LOG=str(log), PYTHONPATH=str(support.parent))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadscope",
                           "--no-loadscope-reorder", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln.split() for ln in log.read_text().splitlines()]
    assert len(rows) == 12 and len({w for w, _, _ in rows}) == 1, rows
    times = [float(t) for _, _, t in rows]
    assert times == sorted(times) and [tag for _, tag, _ in rows] == ["start", "end"] * 6, rows
