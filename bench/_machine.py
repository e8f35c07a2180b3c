"""The machine a benchmark ran on, in one line, for its printed table and docs/performance.md.

Why: timings on the project's machines vary up to 4x between days and between machines of the same kind, so a
figure is only worth recording with where and when it was measured: the CPU model and core count (lscpu's
"Model name", read from /proc/cpuinfo), the GPUs TensorFlow sees, the load average at the start, and the date.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it, or the platform's processor string where /proc is missing."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or "unknown CPU"


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees, by device name (empty on a CPU-only machine); imports TensorFlow."""
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(str(details.get("device_name", device.name)))
    return names


def describe() -> str:
    """One line: CPU model and cores this process may use, the GPUs, the 1-minute load average, the date.

    For example "AMD EPYC, 2 cores, no GPU, load 0.8 at start, 2026-12-03".
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = gpu_names()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu_model()}, {cores} cores, {', '.join(gpus) if gpus else 'no GPU'}, load {load:.1f} at start, "
        f"{datetime.date.today().isoformat()}"
    )


def load_now() -> str:
    """The 1-, 5- and 15-minute load averages, to print beside a result measured on a shared machine."""
    if not hasattr(os, "getloadavg"):
        return "load unknown"
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} / {five:.1f} / {fifteen:.1f}"
