"""Session-wide checks. Keep this file small: fixtures belong next to the tests that use them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from support import schedule

# This session's processes (the tests, `tiebreak serve` subprocesses, Ray workers) get their own TMPDIR, so every
# embedded redis-server they start has its socket, and so its command line, under it: that tells this run's
# redis-servers from anyone else's on the machine (redis-server rewrites its environment: no marker there).
_state: dict[str, str] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    root = tempfile.gettempdir()
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", root)     # tmp_path stays where pytest keeps it
    os.environ.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or "/tmp")   # and Ray's dir (socket paths!)
    d = tempfile.mkdtemp(prefix="tbt-", dir=root)
    _state.update(dir=d, old=os.environ.get("TMPDIR", ""))
    os.environ["TMPDIR"] = d
    tempfile.tempdir = d


# Test files whose tests run several processes against each other on timers (replicas with ownership leases,
# kill -9 and restart, Ray actors and their restarts, torchrun ranks). Under `make test`'s two pytest-xdist workers
# they are one unit of work, so they run one after another on one worker and never two at once: two of them together on
# 2 cores starved a replica long enough to time out (stop 17), and test_service_ray kills every JudgeWorker it finds.
MULTI_PROCESS_FILES = frozenset({
    "test_replicas.py", "test_service_ownership.py", "test_webhook_outbox.py", "test_service_ray.py",
    "test_judges_ray.py", "test_trainer_processes.py",
})


def pytest_configure(config: pytest.Config) -> None:
    record = os.environ.get("TIEBREAK_RECORD_DURATIONS")
    if record:
        config.pluginmanager.register(schedule.DurationRecorder(Path(record)), "tiebreak-durations")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ and tests/slow/ is marked ``integration``: tests/unit/ starts no process
    (no redis-server, no subprocess), which is what `make test-unit` runs. The items are ordered longest unit of
    work first (tests/support/schedule.py)."""
    units = {}
    for item in items:
        path = Path(str(item.fspath))
        if {"integration", "slow"} & set(path.parts[-2:-1]):
            item.add_marker(pytest.mark.integration)
        units[item.nodeid] = schedule.work_unit(item.nodeid, MULTI_PROCESS_FILES)
    schedule.order_longest_first(items, units, schedule.load_durations())


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` (`make test`): the scope of a test is its unit of work (tests/support/schedule.py)."""
    if config.getoption("dist") != "loadscope":
        return None
    return schedule.make_scheduler(config, log, MULTI_PROCESS_FILES)


@pytest.fixture
def ray_local():
    """A local Ray shared by consecutive tests that need it (starting one costs ~5-10 s on 2 cores): started by
    the first, shut down after the last of a run of such tests (``pytest_runtest_teardown`` below), so it does
    not idle under the rest of the suite."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if "ray_local" in getattr(item, "fixturenames", ()) and "ray_local" not in getattr(nextitem, "fixturenames", ()):
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _redis_servers_under(d: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "redis-server" in cmd and d + "/" in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run (exit status 1) if a redis-server started by it is still running once every fixture has been
    torn down; the leftovers are listed, then stopped."""
    d = _state.get("dir")
    if not d:
        return
    t0 = time.time()
    left = _redis_servers_under(d)
    while left and time.time() - t0 < 10:        # a server shut down by the last teardown may still be exiting
        time.sleep(0.2)
        left = _redis_servers_under(d)
    if left:
        lines = []
        for p in left:
            try:
                lines.append(f"  pid {p.pid}: {' '.join(p.cmdline())}")
                p.kill()
            except psutil.Error:
                pass
        msg = (f"LEAK: {len(left)} redis-server process(es) started by this test session were still running at "
               "its end (now killed): a test or fixture does not stop what it started\n" + "\n".join(lines))
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_sep("=", "redis-server leak", red=True, bold=True)
            tr.write_line(msg)
        else:
            print(msg)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _state["old"]:
        os.environ["TMPDIR"] = _state["old"]
    else:
        os.environ.pop("TMPDIR", None)
    tempfile.tempdir = None
    shutil.rmtree(d, ignore_errors=True)
