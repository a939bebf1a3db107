"""The ROS-free control-loop pieces the nodes share: the worker, the log throttle, the rates."""

import logging
import threading
import time

import pytest

from vla_ros.control.concurrency import InferenceWorker
from vla_ros.control.stats import RateMeter
from vla_ros.nodes.logs import LogThrottle


def test_worker_survives_a_failing_job_and_a_failing_error_handler(capfd):
    errors = []

    def on_error(exc):
        errors.append(exc)
        raise ValueError('the handler itself failed')

    worker = InferenceWorker(on_error, name='test_worker')
    try:
        assert worker.submit(lambda: 1 / 0)
        assert worker.wait_idle(timeout=5.0)
        assert isinstance(errors[0], ZeroDivisionError)
        assert 'the handler itself failed' in capfd.readouterr().err
        ran = threading.Event()
        assert worker.submit(ran.set), 'the worker must take the next job'
        assert ran.wait(timeout=5.0)
    finally:
        worker.stop()


@pytest.mark.parametrize('exc', [SystemExit(3), KeyboardInterrupt(), GeneratorExit(),
                                 BaseExceptionGroup('policy', [SystemExit(1)])],
                         ids=['SystemExit', 'KeyboardInterrupt', 'GeneratorExit', 'group'])
def test_worker_survives_a_job_raising_a_base_exception(exc):
    """A policy calling sys.exit (or raising any BaseException) is a model error, every time."""
    errors = []

    def job():
        raise exc

    worker = InferenceWorker(errors.append, name='test_worker')
    try:
        for attempt in range(3):
            assert worker.submit(job), f'attempt {attempt}: the worker refused the job'
            assert worker.wait_idle(timeout=5.0)
            assert len(errors) == attempt + 1 and errors[-1] is exc
        ran = threading.Event()
        assert worker.submit(ran.set)
        assert ran.wait(timeout=5.0), 'the worker thread ended'
    finally:
        worker.stop()


def test_log_throttle_logs_one_message_per_key_and_period(caplog):
    throttle = LogThrottle(logging.getLogger('vla_ros.test'), period_s=0.2)
    with caplog.at_level(logging.WARNING):
        throttle.warning('stale', 'stale 1')
        throttle.warning('stale', 'stale 2')
        throttle.error('policy', 'policy 1')  # each key has its own period
        time.sleep(0.25)
        throttle.warning('stale', 'stale 3')
    assert [(r.levelname, r.message) for r in caplog.records] == [
        ('WARNING', 'stale 1'), ('ERROR', 'policy 1'), ('WARNING', 'stale 3')]


def test_rate_meter_restarts_when_the_clock_jumps_back():
    meter = RateMeter(horizon=5.0)
    for k in range(11):
        meter.mark(1000.0 + 0.1 * k)
    assert meter.rate(1001.0) == pytest.approx(10.0)
    for k in range(6):  # a looping bag: the clock is 30 s earlier
        meter.mark(971.0 + 0.2 * k)
    assert meter.rate(972.0) == pytest.approx(5.0)
