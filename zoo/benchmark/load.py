"""A background load: another process keeping cores busy while the harness measures, as dataloader workers or
a second DDP rank do on a training machine.

:func:`background_load` starts a Python process (:func:`run_load`) that runs fp32 matmuls with N intra-op
threads, without pause, until it is stopped. The context manager waits until the load runs before it yields and
stops it when the block ends, however it ends (an error, KeyboardInterrupt); the load also exits by itself as
soon as its parent is gone (killed without a chance to clean up), so it is never left behind.
"""
import contextlib
import os
import select
import subprocess
import sys
from typing import Iterator, List, Optional

import torch

from .specs import BenchmarkError

__all__ = ['background_load', 'describe_load', 'run_load']

_READY = 'ready'
_SIZE = 512  # one matmul takes a few milliseconds on two cores: the parent check below runs often


def describe_load(threads: int) -> str:
    return (f'a separate process (zoo.benchmark.load) kept {threads} thread{"s" * (threads != 1)} busy with fp32 '
            f'{_SIZE}x{_SIZE} matmuls during the measurement, started and stopped by the harness')


@contextlib.contextmanager
def background_load(threads: int, start_timeout_s: float = 300.0) -> Iterator[Optional[subprocess.Popen]]:
    """Keep ``threads`` threads of another process busy inside the block; 0 runs nothing and yields None."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise BenchmarkError(f'background load must be a number of threads >= 0 (0: none), got {threads!r}')
    if threads == 0:
        yield None
        return
    command = [sys.executable, '-c', 'import sys; from zoo.benchmark.load import run_load; run_load(sys.argv[1:])',
               str(threads), str(os.getpid())]
    # a session of its own: Ctrl-C goes to the harness alone, which then stops the load
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
        line = proc.stdout.readline().strip() if ready else ''
        if line != _READY:
            code = proc.poll()
            if code is None and ready:  # end of its output: it is exiting, reap it to report how
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            raise BenchmarkError('the background load process ' + (
                f'exited with code {code} before it ran (its errors are on stderr)' if code is not None
                else f'did not start within {start_timeout_s:.0f} s'))
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def run_load(argv: List[str]) -> None:
    """The load process: ``[THREADS, PARENT_PID]``; runs until it is stopped or its parent is gone."""
    threads, parent = int(argv[0]), int(argv[1])
    torch.set_num_threads(threads)
    a = torch.randn(_SIZE, _SIZE)
    out = torch.empty_like(a)
    torch.mm(a, a, out=out)
    print(_READY, flush=True)
    while os.getppid() == parent:  # a parent that died leaves this process to another: stop then
        torch.mm(a, a, out=out)
