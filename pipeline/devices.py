"""Device selection: which GPUs TensorFlow sees, memory growth, and the precision policy.

Why: TensorFlow fixes its visible devices and memory behaviour at the first op, so the choice is made
once, before anything else touches TensorFlow, and the result is reported for tracking. The choice
itself is a pure function of what was asked and what exists, so it is tested with faked devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# Mixed float16 pays off only from Volta (compute capability 7.0) on; on older GPUs and on CPUs
# it is slower than float32 (about 4x on CPU, measured on this stack).
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)


class DeviceSelectionError(RuntimeError):
    """Raised when the requested devices do not exist on this machine."""


@dataclass(frozen=True)
class GpuInfo:
    """A physical GPU as TensorFlow lists it."""

    index: int
    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class DeviceSelection:
    """What the pipeline runs on."""

    gpus: tuple[GpuInfo, ...]
    precision: str
    descriptions: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    def as_tags(self) -> dict[str, str]:
        """Flat description for the tracking run."""
        names = ", ".join(self.descriptions) if self.descriptions else "CPU"
        return {
            "device.kind": self.kind,
            "device.selected": names,
            "device.gpu_indices": ",".join(str(gpu.index) for gpu in self.gpus) or "none",
            "device.precision": self.precision,
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


def select_devices(
    *,
    requested: str,
    gpu_indices: list[int] | None,
    precision: str,
    available: list[GpuInfo],
) -> DeviceSelection:
    """Decides which devices and which precision policy to use.

    Args:
        requested: "auto" (GPUs when present, else CPU), "cpu" or "gpu" (fail without one).
        gpu_indices: Which GPUs to use; None means all of them.
        precision: "auto", "float32" or "mixed_float16".
        available: The GPUs this machine has.

    Returns:
        The selection.

    Raises:
        DeviceSelectionError: A GPU was required but none exists, an index is out of range, or
            mixed precision was forced without a GPU.
    """
    if requested == "cpu":
        chosen: tuple[GpuInfo, ...] = ()
    else:
        by_index = {gpu.index: gpu for gpu in available}
        if gpu_indices is None:
            chosen = tuple(available)
        else:
            missing = [index for index in gpu_indices if index not in by_index]
            if missing and (requested == "gpu" or available):
                raise DeviceSelectionError(
                    f"device.gpu_indices asks for GPU {missing}, this machine has "
                    f"{sorted(by_index) if by_index else 'no GPU'}"
                )
            chosen = tuple(by_index[index] for index in gpu_indices if index in by_index)
        if requested == "gpu" and not chosen:
            raise DeviceSelectionError("device.type is 'gpu' but TensorFlow sees no GPU on this machine")

    if precision == "auto":
        capable = bool(chosen) and all(
            gpu.compute_capability is not None and gpu.compute_capability >= MIXED_PRECISION_MIN_CAPABILITY
            for gpu in chosen
        )
        policy = "mixed_float16" if capable else "float32"
    elif precision == "mixed_float16" and not chosen:
        raise DeviceSelectionError(
            "device.precision 'mixed_float16' needs a GPU; on the CPU it is several times slower"
        )
    else:
        policy = precision
    descriptions = tuple(f"GPU:{gpu.index} {gpu.name}" for gpu in chosen)
    return DeviceSelection(gpus=chosen, precision=policy, descriptions=descriptions)


def _describe_gpus(physical: list[tf.config.PhysicalDevice]) -> list[GpuInfo]:
    import tensorflow as tf

    gpus = []
    for index, device in enumerate(physical):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(
            GpuInfo(
                index=index,
                name=str(details.get("device_name", device.name)),
                compute_capability=details.get("compute_capability"),
            )
        )
    return gpus


def configure(*, requested: str, gpu_indices: list[int] | None, precision: str) -> DeviceSelection:
    """Applies the device choice to TensorFlow and Keras; call before any other TensorFlow op.

    Args:
        requested: "auto", "cpu" or "gpu".
        gpu_indices: GPUs to use; None for all.
        precision: "auto", "float32" or "mixed_float16".

    Returns:
        What was selected, for tracking.

    Raises:
        DeviceSelectionError: See `select_devices`.
    """
    import keras
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    selection = select_devices(
        requested=requested, gpu_indices=gpu_indices, precision=precision, available=_describe_gpus(physical)
    )
    chosen_devices = [physical[gpu.index] for gpu in selection.gpus]
    tf.config.set_visible_devices(chosen_devices, "GPU")
    for device in chosen_devices:
        tf.config.experimental.set_memory_growth(device, True)
    keras.mixed_precision.set_global_policy(selection.precision)
    return selection
