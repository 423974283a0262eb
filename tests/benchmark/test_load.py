"""zoo.benchmark.load: the background load process is started, runs while the block runs, and is always stopped
(also on errors, Ctrl-C and when the harness itself is killed). Nothing here measures time."""
import contextlib
import signal
import subprocess
import sys
import time

import pytest

from zoo.benchmark import load, report, runner
from zoo.benchmark.specs import BenchmarkError

from .toys import SDPA


def running(pid: int) -> bool:
    """Alive and not a zombie (a reaped or defunct process no longer loads anything)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pid)


def test_load_runs_inside_the_block_and_stops_after():
    with load.background_load(2) as proc:
        assert proc.poll() is None and running(proc.pid)
        with open(f'/proc/{proc.pid}/status') as f:
            threads = int(next(line for line in f if line.startswith('Threads:')).split()[1])
        assert threads >= 2
    assert proc.returncode is not None and not running(proc.pid)


def test_load_is_stopped_when_the_block_fails():
    with pytest.raises(RuntimeError):
        with load.background_load(1) as proc:
            raise RuntimeError('the measurement failed')
    assert proc.returncode is not None and not running(proc.pid)


def test_load_ends_itself_when_the_harness_is_killed():
    code = ('import time\nfrom zoo.benchmark.load import background_load\n'
            'with background_load(1) as proc:\n    print(proc.pid, flush=True)\n    time.sleep(600)\n')
    harness = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(harness.stdout.readline())
        assert running(pid)
        harness.send_signal(signal.SIGKILL)  # no finally block runs in the harness
        harness.wait()
        assert wait_gone(pid), f'the load process {pid} outlived its harness'
    finally:
        harness.kill()
        harness.wait()
        harness.stdout.close()


def test_no_load_starts_nothing_and_bad_counts_are_refused():
    with load.background_load(0) as proc:
        assert proc is None
    for bad in (-1, 1.5, True):
        with pytest.raises(BenchmarkError, match='number of threads >= 0'):
            with load.background_load(bad):
                pass


def test_a_load_that_cannot_start_is_reported(monkeypatch):
    monkeypatch.setattr(load.sys, 'executable', '/bin/false')
    with pytest.raises(BenchmarkError, match='exited with code 1 before it ran'):
        with load.background_load(1):
            pass


def test_kernel_measured_under_load(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def spy(threads):
        with load.background_load(threads) as proc:
            seen.append((proc, running(proc.pid)))
            yield proc

    monkeypatch.setattr(runner, 'background_load', spy)
    shape = dict(shape=[1, 2, 8, 4])
    rows = runner.benchmark_kernel(SDPA, dict(q=shape, k=shape, v=shape), runs=1, warmup=0, background_load=1)
    ((proc, was_running),) = seen
    assert was_running and proc.returncode is not None
    assert [r['background_load'] for r in rows] == [1]
    assert 'background load: a separate process (zoo.benchmark.load) kept 1 thread busy' in report.markdown_table(rows)


def test_interrupted_measurement_leaves_no_load_behind(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def spy(threads):
        with load.background_load(threads) as proc:
            seen.append(proc)
            yield proc

    monkeypatch.setattr(runner, 'background_load', spy)
    shape = dict(shape=[1, 2, 8, 4])
    with pytest.raises(KeyboardInterrupt):
        runner.benchmark_kernel('tests.benchmark.toys:interrupted_attention', dict(q=shape, k=shape, v=shape),
                                runs=1, warmup=0, background_load=1)
    (proc,) = seen
    assert proc.returncode is not None and not running(proc.pid)
