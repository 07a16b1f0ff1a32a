"""`make run`'s supervisor restarts a child that dies, and stops what it started."""

import sys
import time

from tasks.supervisor.main import Child


def test_dead_child_is_restarted_with_backoff():
    child = Child("flaky", [sys.executable, "-c", "raise SystemExit(3)"], env={})
    child.start()
    first_pid = child.proc.pid
    child.proc.wait(10)
    now = time.monotonic()
    child.check(now)  # notices the exit, schedules a restart
    assert child.proc is None and child.next_start > now and child.restarts == 1
    child.check(child.next_start)  # due: starts again
    assert child.proc is not None and child.proc.pid != first_pid
    child.proc.wait(10)
    child.check(time.monotonic())
    assert child.restarts == 2 and child.next_start - time.monotonic() > 3  # backs off


def test_stop_terminates_a_running_child():
    child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env={})
    child.start()
    child.stop()
    assert child.proc.wait(10) != 0


def test_flower_is_opt_in_and_never_without_a_login():
    import pytest

    from tasks.contract.settings import Settings
    from tasks.supervisor.main import _children

    env = {"LLMHOST_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert [c.name for c in _children(Settings(default_models=["a/b"]), env)] == ["worker a/b", "api"]
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        _children(Settings(default_models=["a/b"], flower_port=5555), env)
    flower = _children(Settings(default_models=["a/b"], flower_port=5555), {**env, "FLOWER_BASIC_AUTH": "u:p"})[-1]
    assert flower.name == "flower" and "flower" in flower.argv and "--port=5555" in flower.argv
    assert "--broker=redis://127.0.0.1:1/0" in flower.argv
