"""Tests of pipeline/runtime/devices.py: the pure device choice with faked GPUs, and one real `configure`."""

from __future__ import annotations

import os
import re
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
    order_gpus_by_bus,
    resolve_determinism,
    select_devices,
    unseen_gpus_reason,
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


@pytest.mark.parametrize("requested", ["gpu", "auto"])
def test_a_missing_gpu_index_stops_whatever_the_accelerator(requested: str) -> None:
    # auto used to fall back to the CPU here, although the run asked for GPUs 0 and 2.
    with pytest.raises(DeviceSelectionError, match=r"asks for GPU \[0, 2\]; this machine has no GPU"):
        _select(available=[], requested=requested, gpu_indices=[0, 2])
    with pytest.raises(DeviceSelectionError, match=r"asks for GPU \[2\]; this machine has 0: NVIDIA A100"):
        _select(available=A100_PAIR, requested=requested, gpu_indices=[0, 2])


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
        "device.xla_requested": "true",
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
        "device.xla_requested": "auto",
        "device.memory_growth": "true",
        "device.replicas": "1",
        "device.strategy": "default (one device)",
    }


def test_two_selected_gpus_train_in_step_under_mirrored_strategy() -> None:
    selection = _select(available=A100_PAIR, jit_compile=False)
    assert (
        selection.replicas,
        selection.as_tags()["device.strategy"],
        selection.as_tags()["device.xla_requested"],
    ) == (2, "MirroredStrategy", "false")


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


def test_nvml_indices_need_cuda_numbering_by_bus() -> None:
    # CUDA's default order (fastest first) is not the driver's: no index maps then, so no GPU is sampled.
    selection = DeviceSelection(gpus=(GpuInfo(0, "NVIDIA A100", (8, 0)),), precision="float32")
    assert nvml_indices(selection, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}) == []
    assert nvml_indices(selection, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) == [0]


def test_gpus_are_numbered_by_bus_unless_the_user_chose() -> None:
    environment: dict[str, str] = {}
    order_gpus_by_bus(environment)
    assert environment == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    chosen = {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    order_gpus_by_bus(chosen)
    assert chosen == {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}


@pytest.mark.parametrize(
    ("visible", "cuda_build", "libraries", "expected"),
    [
        ("-1", True, True, r"^CUDA_VISIBLE_DEVICES='-1' hides them$"),
        ("", True, True, r"^CUDA_VISIBLE_DEVICES='' hides them$"),
        (None, False, False, r"^this TensorFlow was built without CUDA; install tensorflow\[and-cuda\]$"),
        ("0", True, False, r"^the CUDA libraries TensorFlow loads are not installed \(pip's tensorflow\[and-cuda\]"),
        (None, True, True, r"^the CUDA libraries are installed but did not load \(a driver older"),
    ],
)
def test_why_tensorflow_sees_no_gpu_the_driver_lists(
    visible: str | None, cuda_build: bool, libraries: bool, expected: str
) -> None:
    reason = unseen_gpus_reason(cuda_visible_devices=visible, cuda_build=cuda_build, cuda_libraries=libraries)
    assert re.search(expected, reason)


def test_gpus_tensorflow_does_not_see_are_one_line_and_a_tag() -> None:
    selection = DeviceSelection(
        gpus=(),
        precision="float32",
        unseen_gpus=("0, NVIDIA H200",),
        unseen_reason="CUDA_VISIBLE_DEVICES='' hides them",
    )
    line = "nvidia-smi lists 1 GPU(s) (0, NVIDIA H200) but TensorFlow sees none: CUDA_VISIBLE_DEVICES='' hides them; "
    assert selection.unseen_warning == line + "training on the CPU"
    assert selection.as_tags()["device.gpus_unseen"] == selection.unseen_warning
    assert "device.gpus_unseen" not in _select(available=[]).as_tags()
    assert _select(available=[]).unseen_warning is None


@pytest.mark.parametrize(
    ("setting", "available", "expected"),
    [
        ("auto", [], (True, "auto: on the CPU")),
        (
            "auto",
            A100_PAIR,
            (False, "auto: off on GPUs, whose deterministic kernels are slower or missing and exclude XLA"),
        ),
        (True, A100_PAIR, (True, "train.deterministic")),
        (False, [], (False, "train.deterministic")),
    ],
)
def test_determinism_is_on_for_the_cpu_and_off_for_gpus_unless_asked(
    setting: bool | str, available: list[GpuInfo], expected: tuple[bool, str]
) -> None:
    assert resolve_determinism(setting, _select(available=available)) == expected


def _with_fake_nvidia_smi(script: str, folder: Path) -> str:
    """Runs `script` where PATH finds an `nvidia-smi` that lists one H200 and TensorFlow sees no GPU; its stdout."""
    executable = folder / "nvidia-smi"
    executable.write_text("#!/bin/sh\necho '0, NVIDIA H200'\n")
    executable.chmod(0o755)
    environment = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "-1"}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_configure_says_when_the_driver_lists_gpus_tensorflow_does_not_see(tmp_path: Path) -> None:
    script = (
        "import os; from pipeline.runtime import devices; from pipeline.params.runtime import DeviceParams; "
        "s = devices.configure(DeviceParams()); print(s.kind); print(s.unseen_warning); "
        "print(os.environ['CUDA_DEVICE_ORDER'])"
    )
    assert _with_fake_nvidia_smi(script, tmp_path).splitlines() == [
        "cpu",
        "nvidia-smi lists 1 GPU(s) (0, NVIDIA H200) but TensorFlow sees none: CUDA_VISIBLE_DEVICES='-1' hides them; "
        "training on the CPU",
        "PCI_BUS_ID",
    ]


def test_accelerator_gpu_stops_with_what_the_driver_lists(tmp_path: Path) -> None:
    script = (
        "from pipeline.runtime import devices; from pipeline.params.runtime import DeviceParams\n"
        "try:\n    devices.configure(DeviceParams(accelerator='gpu'))\n"
        "except devices.DeviceSelectionError as error:\n    print(error)\n"
    )
    assert _with_fake_nvidia_smi(script, tmp_path).strip() == (
        "device.accelerator is 'gpu' but TensorFlow sees no GPU on this machine "
        "(nvidia-smi lists 0, NVIDIA H200: CUDA_VISIBLE_DEVICES='-1' hides them)"
    )
