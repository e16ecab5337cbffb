"""The in-process schedule: due runs only, and one runner at a time across processes."""
from datetime import timedelta

from retention.schedule import Scheduler, run_lock

from test_retention_job import NOW, Clock, build, dated_entry, policy


def test_runs_when_due_and_keeps_the_interval(data_dir):
    build(data_dir, {0: [dated_entry("info", NOW)]})
    clock = Clock(NOW)
    scheduler = Scheduler(data_dir, policy(), 600, clock)
    assert scheduler.run_if_due() is not None  # never ran: due
    clock.moment = NOW + timedelta(seconds=599)
    assert scheduler.run_if_due() is None
    clock.moment = NOW + timedelta(seconds=600)
    assert scheduler.run_if_due() is not None
    # Another process's scheduler shares the interval through meta.db.
    assert Scheduler(data_dir, policy(), 600, clock).run_if_due() is None


def test_only_one_runner_at_a_time(data_dir):
    build(data_dir, {0: [dated_entry("info", NOW)]})
    other = Scheduler(data_dir, policy(), 600, Clock(NOW))
    with run_lock(data_dir) as held:  # as another worker process running the job
        assert held
        assert other.run_if_due() is None
    assert other.run_if_due() is not None
