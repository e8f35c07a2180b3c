"""Device selection: which GPUs TensorFlow sees, memory growth, and the precision policy.

Why: TensorFlow fixes its visible devices and memory behaviour at the first op, so the choice is made
once, before anything else touches TensorFlow, and the result is reported for tracking. The choice
itself is a pure function of what was asked and what exists, so it is tested with faked devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.params.runtime import DeviceParams

# Mixed float16 pays off only from Volta (compute capability 7.0) on; on older GPUs and on CPUs
# it is slower than float32 (about 4x on CPU, measured on this stack).
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)
# bfloat16 arithmetic in hardware starts with Ampere (8.0); before it, it is emulated and slow.
BFLOAT16_MIN_CAPABILITY = (8, 0)


class DeviceSelectionError(PipelineError, RuntimeError):
    """Raised when the requested devices do not exist on this machine."""


@dataclass(frozen=True)
class GpuInfo:
    """A physical GPU as TensorFlow lists it (index among the GPUs TensorFlow sees)."""

    index: int
    name: str
    compute_capability: tuple[int, int] | None = None
    memory_mb: int | None = None


@dataclass(frozen=True)
class DeviceSelection:
    """What the pipeline runs on, and how.

    Attributes:
        gpus: The selected GPUs; empty on CPU.
        precision: The Keras dtype policy (`float32`, `mixed_float16`, `mixed_bfloat16`).
        descriptions: One readable line per GPU.
        jit_compile: What `Model.compile` gets: "auto" (Keras decides), True or False.
        memory_growth: Whether GPU memory is allocated as needed instead of all at start.
        cuda_visible_devices: `CUDA_VISIBLE_DEVICES` as the process saw it (None when unset).
    """

    gpus: tuple[GpuInfo, ...]
    precision: str
    descriptions: tuple[str, ...] = field(default=())
    jit_compile: bool | str = "auto"
    memory_growth: bool = True
    cuda_visible_devices: str | None = None

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def replicas(self) -> int:
        """Model replicas that train in step: one per selected GPU (MirroredStrategy), else one."""
        return max(1, len(self.gpus))

    def as_tags(self) -> dict[str, str]:
        """Flat description for the tracking run."""
        names = ", ".join(self.descriptions) if self.descriptions else "CPU"

        def per_gpu(values: list[str]) -> str:
            return ", ".join(values) or "none"

        return {
            "device.kind": self.kind,
            "device.selected": names,
            "device.gpu_indices": per_gpu([str(gpu.index) for gpu in self.gpus]),
            "device.compute_capability": per_gpu(
                [".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "?" for gpu in self.gpus]
            ),
            "device.memory_mb": per_gpu([str(gpu.memory_mb) if gpu.memory_mb else "?" for gpu in self.gpus]),
            "device.cuda_visible_devices": "unset" if self.cuda_visible_devices is None else self.cuda_visible_devices,
            "device.precision": self.precision,
            "device.xla": {True: "on", False: "off"}.get(self.jit_compile, "auto (Keras: XLA where the model allows)"),
            "device.memory_growth": str(self.memory_growth).lower(),
            "device.replicas": str(self.replicas),
            "device.strategy": "MirroredStrategy" if self.replicas > 1 else "default (one device)",
        }


def nvml_indices(selection: DeviceSelection, environment: Mapping[str, str]) -> list[int]:
    """The NVIDIA driver's indices of the selected GPUs, for per-GPU system metrics.

    Why: TensorFlow numbers the GPUs that `CUDA_VISIBLE_DEVICES` leaves visible from 0; the driver
    (NVML, which MLflow's monitor reads) numbers every GPU of the machine.

    Args:
        selection: The devices chosen.
        environment: The process environment.

    Returns:
        One index per selected GPU; empty on CPU, or when `CUDA_VISIBLE_DEVICES` names GPUs by UUID
        (no index to map to, so no GPU is sampled rather than the wrong one).
    """
    visible = environment.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [gpu.index for gpu in selection.gpus]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries):
        return []
    return [int(entries[gpu.index]) for gpu in selection.gpus if gpu.index < len(entries)]


def _capable(gpus: tuple[GpuInfo, ...], minimum: tuple[int, int]) -> bool:
    return bool(gpus) and all(gpu.compute_capability is not None and gpu.compute_capability >= minimum for gpu in gpus)


def select_devices(
    device: DeviceParams, *, available: list[GpuInfo], cuda_visible_devices: str | None = None
) -> DeviceSelection:
    """Decides which devices and which precision policy to use.

    Args:
        device: The validated `device` section: `accelerator` ("auto": GPUs when present, else CPU; "cpu";
            "gpu": fail without one), `gpus` ("all" or indices), `precision` ("auto", "float32",
            "mixed_float16", "mixed_bfloat16"), `jit_compile` and `memory_growth`.
        available: The GPUs this machine has.
        cuda_visible_devices: `CUDA_VISIBLE_DEVICES`, recorded for tracking.

    Returns:
        The selection.

    Raises:
        DeviceSelectionError: A GPU was required but none exists, an index does not exist (the message
            lists the GPUs that do), or a mixed precision was forced where it cannot run well.
    """
    accelerator, gpus, precision = device.accelerator, device.gpus, device.precision
    if accelerator == "cpu":
        chosen: tuple[GpuInfo, ...] = ()
    else:
        by_index = {gpu.index: gpu for gpu in available}
        if gpus == "all":
            chosen = tuple(available)
        else:
            missing = [index for index in gpus if index not in by_index]
            if missing and (accelerator == "gpu" or available):
                existing = ", ".join(f"{gpu.index}: {gpu.name}" for gpu in available) or "no GPU"
                raise DeviceSelectionError(f"device.gpus asks for GPU {missing}; this machine has {existing}")
            chosen = tuple(by_index[index] for index in gpus if index in by_index)
        if accelerator == "gpu" and not chosen:
            raise DeviceSelectionError("device.accelerator is 'gpu' but TensorFlow sees no GPU on this machine")

    if precision == "auto":
        policy = "mixed_float16" if _capable(chosen, MIXED_PRECISION_MIN_CAPABILITY) else "float32"
    elif precision == "mixed_float16" and not chosen:
        raise DeviceSelectionError(
            "device.precision 'mixed_float16' needs a GPU; on the CPU it is several times slower"
        )
    elif precision == "mixed_bfloat16" and not _capable(chosen, BFLOAT16_MIN_CAPABILITY):
        found = ", ".join(
            f"{gpu.name} ({'.'.join(map(str, gpu.compute_capability)) if gpu.compute_capability else '?'})"
            for gpu in chosen
        )
        raise DeviceSelectionError(
            "device.precision 'mixed_bfloat16' needs GPUs of compute capability 8.0 or newer (Ampere); "
            f"selected: {found or 'the CPU'}"
        )
    else:
        policy = precision
    descriptions = tuple(
        f"GPU:{gpu.index} {gpu.name}"
        + (f" (compute {'.'.join(map(str, gpu.compute_capability))})" if gpu.compute_capability else "")
        for gpu in chosen
    )
    return DeviceSelection(
        gpus=chosen,
        precision=policy,
        descriptions=descriptions,
        jit_compile=device.jit_compile,
        memory_growth=device.memory_growth,
        cuda_visible_devices=cuda_visible_devices,
    )


def _total_memory_mb() -> dict[int, int]:
    """Total memory per NVIDIA driver index, or nothing when NVML (`nvidia-ml-py`) is unavailable."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        return {
            index: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total // 2**20)
            for index in range(pynvml.nvmlDeviceGetCount())
        }
    except pynvml.NVMLError:
        return {}


def _describe_gpus(physical: list[tf.config.PhysicalDevice], environment: Mapping[str, str]) -> list[GpuInfo]:
    import tensorflow as tf

    memory = _total_memory_mb()
    gpus = []
    for index, device in enumerate(physical):
        details = tf.config.experimental.get_device_details(device)
        described = GpuInfo(
            index=index,
            name=str(details.get("device_name", device.name)),
            compute_capability=details.get("compute_capability"),
        )
        driver_index = nvml_indices(DeviceSelection(gpus=(described,), precision="float32"), environment)
        memory_mb = memory.get(driver_index[0]) if driver_index else None
        gpus.append(GpuInfo(described.index, described.name, described.compute_capability, memory_mb))
    return gpus


def configure(device: DeviceParams) -> DeviceSelection:
    """Applies the `device` section to TensorFlow and Keras; call before any other TensorFlow op.

    Args:
        device: The validated `device` section (see `select_devices`); its `jit_compile` is passed to
            every `compile` of the run through the returned selection.

    Returns:
        What was selected, for tracking; `strategy_scope(distribution_strategy(selection))` then gives the
        scope to build and train the model in.

    Raises:
        DeviceSelectionError: See `select_devices`.
    """
    import os

    import keras
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    selection = select_devices(
        device,
        available=_describe_gpus(physical, os.environ),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    chosen_devices = [physical[gpu.index] for gpu in selection.gpus]
    tf.config.set_visible_devices(chosen_devices, "GPU")
    for chosen in chosen_devices:
        tf.config.experimental.set_memory_growth(chosen, selection.memory_growth)
    keras.mixed_precision.set_global_policy(selection.precision)
    return selection


def distribution_strategy(selection: DeviceSelection) -> tf.distribute.Strategy | None:
    """MirroredStrategy over the selected GPUs when there are several, else None (the default strategy).

    Why only then: one device needs no strategy, and the default one adds nothing. With several, the
    variables are mirrored on exactly the selected GPUs (which `configure` left as the visible ones,
    numbered from 0) and each batch is split between them. Build, compile and train in
    `strategy_scope(strategy)`, with this one strategy object throughout.

    Args:
        selection: What `configure` returned.

    Returns:
        The strategy, or None.
    """
    if selection.replicas == 1:
        return None
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=[f"/gpu:{index}" for index in range(selection.replicas)])


def strategy_scope(strategy: tf.distribute.Strategy | None) -> contextlib.AbstractContextManager[object]:
    """The strategy's scope, or a no-op for the default strategy."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()
