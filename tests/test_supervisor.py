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
