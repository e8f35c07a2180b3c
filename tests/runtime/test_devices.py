"""Tests of pipeline/runtime/devices.py: the pure device choice with faked GPUs, and one real `configure`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.params.runtime import DeviceParams
from pipeline.runtime.devices import (
    DeviceSelection,
    DeviceSelectionError,
    GpuInfo,
    nvml_indices,
    select_devices,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

A100_PAIR = [GpuInfo(0, "NVIDIA A100", (8, 0)), GpuInfo(1, "NVIDIA A100", (8, 0))]
PASCAL = [GpuInfo(0, "Tesla P100", (6, 1))]


def _select(
    *,
    available: list[GpuInfo],
    requested: str = "auto",
    gpu_indices: list[int] | None = None,
    precision: str = "auto",
    cuda_visible_devices: str | None = None,
    **options: object,
) -> DeviceSelection:
    """Calls `select_devices` with the defaults of params.yaml."""
    device = DeviceParams(accelerator=requested, gpus=gpu_indices or "all", precision=precision, **options)
    return select_devices(device, available=available, cuda_visible_devices=cuda_visible_devices)


def test_auto_without_gpu_is_cpu_float32() -> None:
    selection = _select(available=[])

    assert selection.kind == "cpu"
    assert selection.gpus == ()
    assert selection.precision == "float32"


def test_auto_with_two_ampere_gpus_uses_both_in_mixed_precision() -> None:
    selection = _select(available=A100_PAIR)

    assert selection.kind == "gpu"
    assert selection.gpus == tuple(A100_PAIR)
    assert selection.precision == "mixed_float16"
    assert selection.descriptions == ("GPU:0 NVIDIA A100 (compute 8.0)", "GPU:1 NVIDIA A100 (compute 8.0)")
    assert selection.replicas == 2


def test_auto_with_pre_volta_gpu_stays_float32() -> None:
    selection = _select(available=PASCAL)

    assert selection.gpus == tuple(PASCAL)
    assert selection.precision == "float32"


def test_auto_precision_needs_every_chosen_gpu_capable() -> None:
    mixed = [GpuInfo(0, "NVIDIA A100", (8, 0)), GpuInfo(1, "Tesla P100", (6, 1))]

    assert _select(available=mixed).precision == "float32"
    assert _select(available=mixed, gpu_indices=[0]).precision == "mixed_float16"


def test_unknown_compute_capability_stays_float32() -> None:
    assert _select(available=[GpuInfo(0, "unknown", None)]).precision == "float32"


def test_volta_is_the_first_capable_generation() -> None:
    assert _select(available=[GpuInfo(0, "Tesla V100", (7, 0))]).precision == "mixed_float16"


def test_gpu_requested_without_gpu() -> None:
    with pytest.raises(
        DeviceSelectionError, match="device.accelerator is 'gpu' but TensorFlow sees no GPU on this machine"
    ):
        _select(available=[], requested="gpu")


def test_gpu_indices_picks_only_that_gpu() -> None:
    selection = _select(available=A100_PAIR, gpu_indices=[1])

    assert selection.gpus == (A100_PAIR[1],)
    assert selection.descriptions == ("GPU:1 NVIDIA A100 (compute 8.0)",)
    assert selection.replicas == 1


def test_gpu_index_out_of_range_is_named() -> None:
    with pytest.raises(
        DeviceSelectionError, match=r"device.gpus asks for GPU \[3\]; this machine has 0: NVIDIA A100, 1: NVIDIA A100"
    ):
        _select(available=A100_PAIR, gpu_indices=[3])


def test_gpu_index_with_gpu_required_and_none_present() -> None:
    with pytest.raises(DeviceSelectionError, match=r"asks for GPU \[0\]; this machine has no GPU"):
        _select(available=[], requested="gpu", gpu_indices=[0])


def test_cpu_requested_ignores_present_gpus() -> None:
    selection = _select(available=A100_PAIR, requested="cpu")

    assert selection.kind == "cpu"
    assert selection.gpus == ()
    assert selection.precision == "float32"


@pytest.mark.parametrize("available", [[], A100_PAIR])
def test_mixed_precision_forced_on_cpu(available: list[GpuInfo]) -> None:
    requested = "cpu" if available else "auto"

    with pytest.raises(DeviceSelectionError, match="device.precision 'mixed_float16' needs a GPU"):
        _select(available=available, requested=requested, precision="mixed_float16")


def test_mixed_precision_forced_on_old_gpu_is_honoured() -> None:
    assert _select(available=PASCAL, precision="mixed_float16").precision == "mixed_float16"


def test_float32_forced_on_capable_gpu() -> None:
    selection = _select(available=A100_PAIR, precision="float32")

    assert selection.gpus == tuple(A100_PAIR)
    assert selection.precision == "float32"


def test_tags_of_gpu_selection() -> None:
    selection = _select(
        available=[GpuInfo(0, "NVIDIA A100", (8, 0), 40960), GpuInfo(1, "NVIDIA A100", (8, 0), 40960)],
        gpu_indices=[1],
        jit_compile=True,
        cuda_visible_devices="2,3",
    )
    assert selection.as_tags() == {
        "device.kind": "gpu",
        "device.selected": "GPU:1 NVIDIA A100 (compute 8.0)",
        "device.gpu_indices": "1",
        "device.compute_capability": "8.0",
        "device.memory_mb": "40960",
        "device.cuda_visible_devices": "2,3",
        "device.precision": "mixed_float16",
        "device.xla": "on",
        "device.memory_growth": "true",
        "device.replicas": "1",
        "device.strategy": "default (one device)",
    }


def test_tags_of_cpu_selection() -> None:
    assert _select(available=[]).as_tags() == {
        "device.kind": "cpu",
        "device.selected": "CPU",
        "device.gpu_indices": "none",
        "device.compute_capability": "none",
        "device.memory_mb": "none",
        "device.cuda_visible_devices": "unset",
        "device.precision": "float32",
        "device.xla": "auto (Keras: XLA where the model allows)",
        "device.memory_growth": "true",
        "device.replicas": "1",
        "device.strategy": "default (one device)",
    }


def test_two_selected_gpus_train_in_step_under_mirrored_strategy() -> None:
    selection = _select(available=A100_PAIR, jit_compile=False)
    assert (selection.replicas, selection.as_tags()["device.strategy"], selection.as_tags()["device.xla"]) == (
        2,
        "MirroredStrategy",
        "off",
    )


def test_bfloat16_needs_ampere_and_is_used_when_asked() -> None:
    assert _select(available=A100_PAIR, precision="mixed_bfloat16").precision == "mixed_bfloat16"
    volta = [GpuInfo(0, "Tesla V100", (7, 0))]
    with pytest.raises(
        DeviceSelectionError, match=r"needs GPUs of compute capability 8.0 .*selected: Tesla V100 \(7.0\)"
    ):
        _select(available=volta, precision="mixed_bfloat16")
    with pytest.raises(DeviceSelectionError, match="selected: the CPU"):
        _select(available=[], precision="mixed_bfloat16")


def test_the_cpu_path_is_configured_for_real() -> None:
    script = (
        "from pipeline.runtime import devices; import keras; "
        "from pipeline.params.runtime import DeviceParams; "
        "s = devices.configure(DeviceParams(jit_compile=False)); "
        "print(s.kind, s.precision, s.replicas, keras.mixed_precision.global_policy().name, "
        "devices.distribution_strategy(s))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.split() == ["cpu", "float32", "1", "float32", "None"]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, [1]), ("4,6", [6]), ("4, 6", [6]), ("GPU-5a1c0e7e,GPU-77aa3b21", []), ("3", [])],
)
def test_nvml_indices_map_tensorflows_numbering_to_the_drivers(visible: str | None, expected: list[int]) -> None:
    selection = DeviceSelection(gpus=(GpuInfo(1, "NVIDIA A100", (8, 0)),), precision="float32")
    environment = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert nvml_indices(selection, environment) == expected


def test_nvml_indices_on_cpu_are_empty() -> None:
    assert nvml_indices(DeviceSelection(gpus=(), precision="float32"), {"CUDA_VISIBLE_DEVICES": "0"}) == []
