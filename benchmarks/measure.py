"""Timing and peak memory of one method, in this process, with time and memory limits.

- Time: the median of repeated runs (wall clock; CUDA synchronised).
- Memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the run;
  on CPU the peak resident set size above the resident size before the run, read from
  ``/proc/self/status`` (``VmHWM``) after resetting the peak through ``/proc/self/clear_refs``
  and returning freed heap pages to the system (``malloc_trim``). Linux only; elsewhere the
  memory column is left empty.
- Limits: a run longer than ``time_limit`` seconds is interrupted (``SIGALRM``, between two
  torch operations) and reported as a timeout; a run whose memory grows beyond
  ``memory_limit`` bytes is interrupted the same way by a watcher thread and reported as out of
  memory, as is any allocation failure.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


class LimitExceeded(BaseException):
    """Raised inside a run that passed its time or memory limit (a ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Measurement:
    seconds: float | None  # median over repeats
    peak_bytes: int | None  # extra memory at the peak of the first run
    status: str = "ok"  # ok | timeout | oom | error: …
    repeats: int = 0


def _rss_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


#: what the signal handlers raise while a run is measured (``None``: ignore the signal)
_ARMED: dict[int, str | None] = {signal.SIGALRM: None, signal.SIGUSR1: None}


def _handler(signum, frame):
    status = _ARMED.get(signum)
    if status is not None:  # raised again every second until the run gives up
        raise LimitExceeded(status)


signal.signal(signal.SIGALRM, _handler)
signal.signal(signal.SIGUSR1, _handler)


class _MemoryWatch:
    """Samples the resident size every few milliseconds and interrupts the main thread (through
    ``SIGUSR1``) when it grows more than ``limit`` bytes above ``base``."""

    def __init__(self, base: int, limit: int | None) -> None:
        self.base, self.limit = base, limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.005):
            rss = _rss_status("VmRSS")
            if rss is not None and rss - self.base > self.limit:
                os.kill(os.getpid(), signal.SIGUSR1)
                self.stop.wait(0.5)  # again if the first interrupt was lost in native code

    def __enter__(self):
        if self.limit is not None:
            _ARMED[signal.SIGUSR1] = "oom"
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        _ARMED[signal.SIGUSR1] = None
        return False


class _AddressLimit:
    """Caps the address space at its current size plus ``limit`` bytes (``RLIMIT_AS``), so that
    one huge allocation fails with an error instead of waking the kernel's OOM killer before the
    watcher can react."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.previous = None

    def __enter__(self):
        size = _rss_status("VmSize")
        if self.limit is not None and size is not None:
            self.previous = resource.getrlimit(resource.RLIMIT_AS)
            cap = size + self.limit
            hard = self.previous[1]
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY
                                                    else min(cap, hard), hard))
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            resource.setrlimit(resource.RLIMIT_AS, self.previous)
        return False


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    run: Callable[[], object],
    *,
    device: torch.device,
    repeats: int = 3,
    time_limit: float = 120.0,
    memory_limit: int | None = None,
) -> Measurement:
    """Median time and peak extra memory of ``run()`` (see the module docstring)."""

    times: list[float] = []
    peak = None
    status = "ok"
    started = time.perf_counter()
    try:
        for index in range(repeats):
            _trim()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                tracked = _reset_peak()
                base = _rss_status("VmRSS") or 0
            remaining = time_limit - (time.perf_counter() - started)
            if index > 0 and remaining < 2 * times[-1]:
                break  # no time left for another repeat: keep what was measured
            _ARMED[signal.SIGALRM] = "timeout"
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), 1.0)  # then every second
            cpu_limit = memory_limit if device.type != "cuda" else None
            try:
                with _AddressLimit(None if cpu_limit is None else 2 * cpu_limit), \
                        _MemoryWatch(base, cpu_limit):
                    _synchronise(device)
                    start = time.perf_counter()
                    out = run()
                    _synchronise(device)
                    times.append(time.perf_counter() - start)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _ARMED[signal.SIGALRM] = None
            if index == 0:
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) - base
                    if memory_limit is not None and peak > memory_limit:
                        raise LimitExceeded("oom")
                elif tracked:
                    peak = max(0, (_rss_status("VmHWM") or base) - base)
                    if memory_limit is not None and peak > memory_limit:
                        raise LimitExceeded("oom")
            del out
    except LimitExceeded as exceeded:
        status = exceeded.status
    except (MemoryError, torch.OutOfMemoryError):
        status = "oom"
    except Exception as error:  # a peer that fails on this model: report, do not stop
        message = str(error)
        lowered = message.lower()
        status = "oom" if "memory" in lowered and "alloc" in lowered else (
            f"error: {type(error).__name__}: {message.splitlines()[0][:100] if message else ''}")
    finally:
        _trim()
    if status != "ok":
        return Measurement(None, peak, status, len(times))
    return Measurement(statistics.median(times), peak, status, len(times))
