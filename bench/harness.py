"""What every benchmark here shares: one way to time, one way to measure memory, the machine's
description and the tables (bench_renderer, bench_pipeline, gpu_check).

Timing: wall-clock seconds of a step, the device synchronised before and after; warm-up first,
then the median of the timed repeats.

Memory, of a region of code (:class:`PeakMemory`), in bytes:

- ``peak``: the true peak while the region ran — on CUDA ``torch.cuda.max_memory_allocated(device)``
  after ``reset_peak_memory_stats(device)`` at the start (it counts everything allocated: models,
  pyramid, activations); on the CPU the resident set's high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` at the start);
- ``resident``: what was already held when the region started (``memory_allocated`` / ``VmRSS``);
- ``added`` = ``peak − resident``: what the region itself needed on top.

Where ``clear_refs`` cannot be written the CPU peak is the process's ``ru_maxrss`` (a peak since the
process started, an upper bound of the region's) and ``method`` says so.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import time
from typing import Callable, Optional, Sequence

import torch


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device) -> None:
    """Wait for ``device``'s queued work (nothing to wait for on the CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def timed(step: Callable[[], object], device, repeats: int, warmup: bool = True) -> dict:
    """``{"median_s", "times_s", "warmup_s"}`` of ``step``: one warm-up call (unless ``warmup`` is
    False), then ``repeats`` timed calls, each between two synchronisations of ``device``."""
    warm = None
    if warmup:
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warm}


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """The true peak and the resident part of a region on ``device`` (see the module docstring).

    ``with PeakMemory(device) as mem: ...`` then ``mem.result()`` →
    ``{"peak_bytes", "resident_bytes", "added_bytes", "method"}``.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.method = ""

    def start(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident = torch.cuda.memory_allocated(self.device)
            self.method = f"torch.cuda.max_memory_allocated({self.device}) after reset_peak_memory_stats"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the resident set's high-water mark (Linux >= 4.0)
            self.method = "VmHWM (reset through /proc/self/clear_refs)"
        except OSError:
            self.method = "ru_maxrss (an upper bound: /proc/self/clear_refs not writable)"
        self.resident = _proc_status_bytes("VmRSS")  # read after the reset: the region starts here
        return self

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.method.startswith("VmHWM"):
            # The kernel raises the high-water mark lazily (on unmaps, not on every page fault), so
            # pages touched after the reset and released by madvise before this read can leave it
            # below the start; the region's peak is at least what it started with.
            return max(_proc_status_bytes("VmHWM"), self.resident)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def result(self) -> dict:
        peak = self.peak_bytes()
        return {
            "peak_bytes": peak,
            "resident_bytes": self.resident,
            "added_bytes": max(0, peak - self.resident),
            "method": self.method,
        }

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.final = self.result()


class OtherLoad:
    """Average number of CPUs busy with *other* processes (and VM steal) over a region:
    Δ(busy jiffies in /proc/stat) − Δ(this process's utime+stime), per wall second. Timings taken
    while this is well above 0 are contaminated by concurrent work. None if unavailable."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])  # utime stime (all threads)
            return busy, own, time.perf_counter()
        except (OSError, ValueError, IndexError):
            return None

    def cores(self) -> Optional[float]:
        end = self._sample()
        if self.start is None or end is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        wall = end[2] - self.start[2]
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / hz / wall)


def machine_info(device) -> dict:
    """CPU, cores, torch, Python, the device and, on CUDA, that device's GPU name."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if is_cuda(device):
        d = torch.device(device)
        info["gpu"] = torch.cuda.get_device_name(d)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(d).total_memory
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


# ---------------------------------------------------------------------------------- tables
def fmt_s(x: Optional[float]) -> str:
    return "–" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def fmt_min(x: Optional[float]) -> str:
    return "–" if x is None else f"{x / 60:.2f} min"


def fmt_mib(x: Optional[float]) -> str:
    return "–" if x is None else f"{x / 2**20:.0f} MiB"


def fmt_gib(x: Optional[float]) -> str:
    return "–" if x is None else f"{x / 2**30:.2f} GiB"


def fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}×"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """Lines of a Markdown table; ``align``: one of ``l``/``r`` per column (default: first left,
    the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
