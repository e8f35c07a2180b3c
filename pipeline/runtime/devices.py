"""Device selection: which GPUs TensorFlow sees, memory growth, and the precision policy.

Why: TensorFlow fixes its visible devices and memory behaviour at the first op, so the choice is made
once, before anything else touches TensorFlow, and the result is reported for tracking. The choice
itself is a pure function of what was asked and what exists, so it is tested with faked devices.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.params.runtime import DeviceParams
    from pipeline.runtime.cluster import ClusterRole

# Mixed float16 pays off only from Volta (compute capability 7.0) on; on older GPUs and on CPUs
# it is slower than float32 (about 4x on CPU, measured on this stack).
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)
# bfloat16 arithmetic in hardware starts with Ampere (8.0); before it, it is emulated and slow.
BFLOAT16_MIN_CAPABILITY = (8, 0)


# NVML (nvidia-smi, MLflow's GPU monitor, the memory tag) numbers GPUs by PCI bus; CUDA by default puts the
# fastest first. Set before CUDA starts, the two numberings agree.
CUDA_DEVICE_ORDER = "PCI_BUS_ID"
# How long nvidia-smi may take to list the GPUs: it answers in well under a second, but a wedged driver hangs it.
NVIDIA_SMI_SECONDS = 20.0


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
        unseen_gpus: The GPUs `nvidia-smi` lists when TensorFlow sees none of them (one "index, name" each).
        unseen_reason: Why TensorFlow does not see them, when `unseen_gpus` is not empty.
    """

    gpus: tuple[GpuInfo, ...]
    precision: str
    descriptions: tuple[str, ...] = field(default=())
    jit_compile: bool | str = "auto"
    memory_growth: bool = True
    cuda_visible_devices: str | None = None
    unseen_gpus: tuple[str, ...] = field(default=())
    unseen_reason: str = ""

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def replicas(self) -> int:
        """Model replicas that train in step: one per selected GPU (MirroredStrategy), else one."""
        return max(1, len(self.gpus))

    @property
    def unseen_warning(self) -> str | None:
        """One line when the machine has GPUs TensorFlow does not see, else None."""
        if not self.unseen_gpus:
            return None
        listed = "; ".join(self.unseen_gpus)
        return (
            f"nvidia-smi lists {len(self.unseen_gpus)} GPU(s) ({listed}) but TensorFlow sees none: "
            f"{self.unseen_reason}; training on the CPU"
        )

    def as_tags(self) -> dict[str, str]:
        """Flat description for the tracking run: what was selected (`pipeline.runtime.compiled` reads what ran).

        `device.xla_requested` is what was asked; the train stage adds `device.xla` and `device.xla_reason`, and
        replaces `device.precision` and `device.replicas`, with what the compiled model holds.
        """
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
            "device.xla_requested": {True: "true", False: "false"}.get(self.jit_compile, "auto"),
            "device.memory_growth": str(self.memory_growth).lower(),
            "device.replicas": str(self.replicas),
            "device.strategy": "MirroredStrategy" if self.replicas > 1 else "default (one device)",
            **({"device.gpus_unseen": self.unseen_warning or ""} if self.unseen_gpus else {}),
        }


def nvml_indices(selection: DeviceSelection, environment: Mapping[str, str]) -> list[int]:
    """The NVIDIA driver's indices of the selected GPUs, for per-GPU system metrics.

    Why: TensorFlow numbers the GPUs that `CUDA_VISIBLE_DEVICES` leaves visible from 0; the driver
    (NVML, which MLflow's monitor reads) numbers every GPU of the machine.

    Args:
        selection: The devices chosen.
        environment: The process environment.

    Returns:
        One index per selected GPU; empty on CPU, when `CUDA_VISIBLE_DEVICES` names GPUs by UUID (no index
        to map to), or when `CUDA_DEVICE_ORDER` is not PCI_BUS_ID (CUDA's numbering then differs from the
        driver's): no GPU is sampled rather than the wrong one.
    """
    if environment.get("CUDA_DEVICE_ORDER", CUDA_DEVICE_ORDER) != CUDA_DEVICE_ORDER:
        return []
    visible = environment.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [gpu.index for gpu in selection.gpus]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries):
        return []
    return [int(entries[gpu.index]) for gpu in selection.gpus if gpu.index < len(entries)]


def order_gpus_by_bus(environment: MutableMapping[str, str]) -> None:
    """Numbers CUDA's GPUs as the driver does (`CUDA_DEVICE_ORDER=PCI_BUS_ID`), unless the user chose an order.

    Why: CUDA puts the fastest GPU first by default, NVML (nvidia-smi, MLflow's GPU monitor) by PCI bus; on a
    machine with mixed GPUs, `gpus: [1]` would then train on one card while the tags and the sampled metrics
    describe another. CUDA reads the variable once, when it starts: call before TensorFlow's first device query.

    Args:
        environment: The process environment, changed in place.
    """
    environment.setdefault("CUDA_DEVICE_ORDER", CUDA_DEVICE_ORDER)


def nvidia_smi_gpus() -> list[str]:
    """The GPUs the NVIDIA driver lists ("index, name" each), or none when `nvidia-smi` is missing or fails.

    Why: TensorFlow lists no GPU both on a machine without one and on a GPU machine whose TensorFlow lacks
    its CUDA libraries; only the driver tells the two apart.

    Returns:
        One line per GPU.
    """
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        listed = subprocess.run(
            [executable, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def unseen_gpus_reason(*, cuda_visible_devices: str | None, cuda_build: bool, cuda_libraries: bool) -> str:
    """Why TensorFlow sees no GPU on a machine whose driver lists some.

    Args:
        cuda_visible_devices: `CUDA_VISIBLE_DEVICES` (None when unset).
        cuda_build: Whether this TensorFlow was built with CUDA.
        cuda_libraries: Whether pip's NVIDIA CUDA libraries (the `nvidia` package of `tensorflow[and-cuda]`)
            are installed.

    Returns:
        The reason, with what to do.
    """
    if cuda_visible_devices is not None and not any(
        entry.strip() not in ("", "-1") for entry in cuda_visible_devices.split(",")
    ):
        return f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} hides them"
    if not cuda_build:
        return "this TensorFlow was built without CUDA; install tensorflow[and-cuda]"
    if not cuda_libraries:
        return (
            "the CUDA libraries TensorFlow loads are not installed (pip's tensorflow[and-cuda] brings them: "
            "`make setup` installs it where nvidia-smi lists a GPU)"
        )
    return (
        "the CUDA libraries are installed but did not load (a driver older than this TensorFlow's CUDA, or "
        "a GPU in use by another process: see TensorFlow's log with TF_CPP_MIN_LOG_LEVEL=0)"
    )


GPU_DETERMINISM_OFF = "auto: off on GPUs, whose deterministic kernels are slower or missing and exclude XLA"


def resolve_determinism(setting: bool | str, selection: DeviceSelection) -> tuple[bool, str]:
    """Whether TensorFlow's ops run deterministically (`train.deterministic`), and why, for the run's tag.

    Why auto is off on GPUs: deterministic GPU kernels are slower, some ops have none and then raise, and
    Keras turns XLA off while determinism is on; on the CPU it costs little and makes runs repeatable.

    Args:
        setting: `train.deterministic`: "auto", True or False.
        selection: What `configure` selected.

    Returns:
        (deterministic, why in words).
    """
    if setting != "auto":
        return bool(setting), "train.deterministic"
    on_cpu = selection.kind == "cpu"
    return on_cpu, "auto: on the CPU" if on_cpu else GPU_DETERMINISM_OFF


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
            # Whatever the accelerator: a run asked to train on GPU 2 must not quietly train on the CPU.
            if missing:
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


def available_gpus() -> list[GpuInfo]:
    """The GPUs TensorFlow sees, described (name, compute capability, memory); what `configure` chooses from.

    Why public: the tests expect what the device selection gives on the machine they run on, not constants.
    """
    order_gpus_by_bus(os.environ)
    import tensorflow as tf

    return _describe_gpus(tf.config.list_physical_devices("GPU"), os.environ)


def configure(device: DeviceParams) -> DeviceSelection:
    """Applies the `device` section to TensorFlow and Keras; call before any other TensorFlow op.

    Args:
        device: The validated `device` section (see `select_devices`); its `jit_compile` is passed to
            every `compile` of the run through the returned selection.

    Returns:
        What was selected, for tracking; `strategy_scope(distribution_strategy(selection))` then gives the
        scope to build and train the model in. When the driver lists GPUs TensorFlow does not see,
        `unseen_warning` says so and why (the train stage prints and tags it).

    Raises:
        DeviceSelectionError: See `select_devices`.
    """
    order_gpus_by_bus(os.environ)
    import keras
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    listed = nvidia_smi_gpus() if not physical and device.accelerator != "cpu" else []
    reason = (
        unseen_gpus_reason(
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            cuda_build=bool(tf.sysconfig.get_build_info().get("is_cuda_build")),
            cuda_libraries=importlib.util.find_spec("nvidia") is not None,
        )
        if listed
        else ""
    )
    try:
        selection = select_devices(
            device,
            available=_describe_gpus(physical, os.environ),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    except DeviceSelectionError as error:
        if not listed:
            raise
        raise DeviceSelectionError(f"{error} (nvidia-smi lists {'; '.join(listed)}: {reason})") from None
    if listed:
        selection = replace(selection, unseen_gpus=tuple(listed), unseen_reason=reason)
    chosen_devices = [physical[gpu.index] for gpu in selection.gpus]
    tf.config.set_visible_devices(chosen_devices, "GPU")
    for chosen in chosen_devices:
        tf.config.experimental.set_memory_growth(chosen, selection.memory_growth)
    keras.mixed_precision.set_global_policy(selection.precision)
    return selection


def distribution_strategy(
    selection: DeviceSelection, *, cluster: ClusterRole | None = None
) -> tf.distribute.Strategy | None:
    """The strategy the model is built, compiled and trained under; None for the default one.

    Why these: one device needs no strategy, and the default one adds nothing. Several selected GPUs of one
    machine train under MirroredStrategy: the variables are mirrored on exactly the selected GPUs (which
    `configure` left as the visible ones, numbered from 0) and each batch is split between them. Several
    workers (`TF_CONFIG`, `pipeline.runtime.cluster`) train under MultiWorkerMirroredStrategy, over every
    worker's selected devices; TensorFlow requires it made before any other op, so make it right after
    `configure`. Build, compile and train in `strategy_scope(strategy)`, with this one strategy object
    throughout.

    Args:
        selection: What `configure` returned.
        cluster: This process's role among several workers, or None when it trains alone.

    Returns:
        The strategy, or None.
    """
    import tensorflow as tf

    if cluster is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if selection.replicas == 1:
        return None
    return tf.distribute.MirroredStrategy(devices=[f"/gpu:{index}" for index in range(selection.replicas)])


def strategy_scope(strategy: tf.distribute.Strategy | None) -> contextlib.AbstractContextManager[object]:
    """The strategy's scope, or a no-op for the default strategy."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()
