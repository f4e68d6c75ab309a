"""Tests for hardware and runtime discovery and its rich rendering.

CPU parsing runs on embedded /proc/cpuinfo samples; GPUs and runtimes use the real machine and fakes.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import platform
import re
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from crossinfer.errors import UsageError
from crossinfer.hardware import (
    X86_FEATURES,
    CpuInfo,
    GpuInfo,
    GpuReport,
    OnnxInfo,
    RuntimeInfo,
    SystemReport,
    discover,
    discover_cpu,
    discover_gpus,
    parse_cpuinfo,
    probe_runtime,
    render_report,
)
from crossinfer.hardware.discover import (
    NOTE_INT8_NO_DOTPROD,
    NOTE_INT8_NO_VNNI,
    NOTE_NO_AVX2,
)

# --------------------------------------------------------------------------- samples

ZEN4 = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9654 96-Core Processor
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc \
cpuid extd_apicid aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe \
popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse \
3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb \
cat_l3 cdp_l3 invpcid_single hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 \
erms invpcid cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni \
avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local \
avx512_bf16 clzero irperf xsaveerptr rdpru wbnoinvd amd_ppin cppc arat npt lbrv svm_lock nrip_save \
tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic v_vmsave_vmload vgif \
x2avic v_spec_ctrl vnmi avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni \
avx512_bitalg avx512_vpopcntdq la57 rdpid overflow_recov succor smca fsrm flush_l1d
bogomips	: 4792.80

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9654 96-Core Processor
flags		: fpu vme de pse
"""

SAPPHIRE_RAPIDS = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts \
acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs \
bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor \
ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt \
tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 cat_l2 \
cdp_l3 invpcid_single intel_ppin cdp_l2 ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow \
flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm cqm rdt_a \
avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb intel_pt avx512cd sha_ni avx512bw \
avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local split_lock_detect \
avx_vnni avx512_bf16 wbnoinvd dtherm ida arat pln pts hfi vnmi avx512vbmi umip pku ospke waitpkg \
avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid \
bus_lock_detect cldemote movdiri movdir64b enqcmd fsrm md_clear serialize tsxldtrk pconfig arch_lbr \
ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
"""

HASWELL = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts \
acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts \
rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est \
tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes \
xsave avx f16c rdrand lahf_lm abm cpuid_fault epb invpcid_single pti intel_ppin ssbd ibrs ibpb stibp \
tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm \
xsaveopt cqm_llc cqm_occup_llc dtherm ida arat pln pts md_clear flush_l1d
"""

SANDY_BRIDGE_GUEST = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel Xeon E312xx (Sandy Bridge)
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 syscall nx lm constant_tsc rep_good nopl pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 x2apic \
popcnt aes xsave avx hypervisor lahf_lm
"""

GRAVITON3 = """\
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt \
fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg \
dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1

processor	: 1
BogoMIPS	: 2100.00
Features	: fp asimd
CPU implementer	: 0x41
CPU part	: 0xd40
"""

RASPBERRY_PI4 = """\
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3
"""

BF16_NOTE = "AVX512_BF16: OpenVINO runs BF16 by default on this CPU"


def _on(features: dict[str, bool]) -> set[str]:
    return {name for name, present in features.items() if present}


# --------------------------------------------------------------------------- parse_cpuinfo


def test_parse_zen4() -> None:
    parsed = parse_cpuinfo(ZEN4)
    assert parsed.isa == "x86"
    assert parsed.vendor == "AMD"
    assert parsed.model_name == "AMD EPYC 9654 96-Core Processor"
    assert set(parsed.features) == set(X86_FEATURES)
    assert _on(parsed.features) == {
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
    }
    assert parsed.reason is None
    assert NOTE_INT8_NO_VNNI not in parsed.notes
    assert any(note.startswith(BF16_NOTE) for note in parsed.notes)
    assert not any("AMX" in note for note in parsed.notes)


def test_parse_sapphire_rapids() -> None:
    parsed = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert parsed.vendor == "Intel"
    assert parsed.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert all(parsed.features.values()), "Sapphire Rapids has every listed x86 feature"
    assert NOTE_INT8_NO_VNNI not in parsed.notes
    assert any(note.startswith(BF16_NOTE) for note in parsed.notes)
    assert any(note.startswith("AMX:") for note in parsed.notes)
    assert any(note.startswith("AVX512_FP16:") for note in parsed.notes)


def test_parse_avx2_only_cpu_warns_about_int8() -> None:
    parsed = parse_cpuinfo(HASWELL)
    assert _on(parsed.features) == {"sse4_2", "avx", "avx2", "fma", "f16c"}
    assert parsed.notes == (NOTE_INT8_NO_VNNI,)


def test_parse_pre_avx2_guest() -> None:
    parsed = parse_cpuinfo(SANDY_BRIDGE_GUEST)
    assert _on(parsed.features) == {"sse4_2", "avx"}
    assert NOTE_NO_AVX2 in parsed.notes
    assert NOTE_INT8_NO_VNNI in parsed.notes
    assert any("hypervisor" in note for note in parsed.notes)


def test_parse_arm_graviton3() -> None:
    parsed = parse_cpuinfo(GRAVITON3)
    assert parsed.isa == "arm"
    assert parsed.vendor == "ARM"
    assert parsed.model_name == "ARM Neoverse-V1"
    assert parsed.features == {
        "neon": True,
        "fp16": True,
        "dotprod": True,
        "i8mm": True,
        "bf16": True,
        "sve": True,
        "sve2": False,
    }
    assert NOTE_INT8_NO_DOTPROD not in parsed.notes
    assert any(note.startswith("I8MM:") for note in parsed.notes)
    assert any("mlas.enable_gemm_fastmath_arm64_bfloat16" in note for note in parsed.notes)


def test_parse_arm_without_dotprod() -> None:
    parsed = parse_cpuinfo(RASPBERRY_PI4)
    assert parsed.model_name == "ARM Cortex-A72"
    assert _on(parsed.features) == {"neon"}
    assert parsed.notes == (NOTE_INT8_NO_DOTPROD,)


def test_parse_text_without_feature_list() -> None:
    parsed = parse_cpuinfo("processor : 0\nisa : rv64imafdc\n")
    assert parsed.isa is None
    assert parsed.features == {}
    assert parsed.reason
    assert parse_cpuinfo("").reason


def test_non_linux_reports_unknown_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    cpu = discover_cpu()
    assert cpu.features == {}
    assert cpu.features_reason is not None
    assert "unknown on Darwin" in cpu.features_reason
    assert cpu.model_name
    assert cpu.logical_cores >= 1


# --------------------------------------------------------------------------- real machine


def _real_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def test_real_cpu() -> None:
    cpu = discover().cpu
    assert cpu.logical_cores >= 1
    assert cpu.physical_cores is None or 1 <= cpu.physical_cores <= cpu.logical_cores
    assert cpu.total_memory_bytes > 0
    assert cpu.architecture == platform.machine()
    flags = _real_flags()
    if flags is None:
        pytest.skip("no x86 flags line in /proc/cpuinfo on this machine")
    assert cpu.features == {name: name in flags for name in X86_FEATURES}
    if {"avx512f", "avx512_vnni", "avx512_bf16"} <= flags:
        # The development machine (AMD EPYC guest) has all three.
        assert cpu.features["avx512f"] is True
        assert cpu.features["avx512_vnni"] is True
        assert cpu.features["avx512_bf16"] is True
        assert NOTE_INT8_NO_VNNI not in cpu.notes


def test_real_runtimes() -> None:
    report = discover()
    assert {r.name for r in report.runtimes} == {
        *("onnxruntime", "openvino", "torch", "jax", "iree", "litert")
    }
    ort = report.runtime("onnxruntime")
    assert ort is not None and ort.usable and ort.version
    assert "CPUExecutionProvider" in ort.devices
    ov = report.runtime("openvino")
    assert ov is not None
    if importlib.util.find_spec("openvino") is None:  # the core install, without the extra
        assert not ov.installed and ov.install_hint == "pip install 'crossinfer[openvino]'"
    else:
        assert ov.usable and ov.version and "CPU" in ov.device_ids
    assert report.onnx.version and report.onnx.max_opset and report.onnx.ir_version
    for runtime in report.runtimes:
        assert runtime.usable or runtime.reason


def test_discover_selected_runtimes_and_unknown_name() -> None:
    report = discover(runtimes=["onnxruntime", "onnxruntime"])
    assert [r.name for r in report.runtimes] == ["onnxruntime"]
    with pytest.raises(UsageError, match="tensorflow"):
        discover(runtimes=["tensorflow"])


def test_report_to_dict_is_json_and_hostname_free() -> None:
    report = discover()
    text = json.dumps(report.to_dict())
    data = json.loads(text)
    assert data["cpu"]["model_name"] == report.cpu.model_name
    assert [r["name"] for r in data["runtimes"]] == [r.name for r in report.runtimes]
    node = platform.node()
    if len(node) >= 6:
        # Short host names could collide with ordinary words, so only long ones are checked.
        assert node not in text


# --------------------------------------------------------------------------- GPU


def test_real_nvml() -> None:
    report = discover_gpus()
    if report.gpus:
        assert report.reason is None
        assert all(gpu.total_memory_bytes > 0 for gpu in report.gpus)
        return
    assert report.reason
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        assert report.reason == (
            "NVML not available: no NVIDIA driver (libnvidia-ml.so.1 not found)"
        )


class _FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def _fake_pynvml(*, init_error: int | None = None, broken_index: int | None = None) -> Any:
    nvml: Any = types.ModuleType("pynvml")
    nvml.NVMLError = _FakeNVMLError
    nvml.NVML_ERROR_LIBRARY_NOT_FOUND = 12
    nvml.NVML_ERROR_DRIVER_NOT_LOADED = 9
    nvml.calls = []
    devices = [
        (b"NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0), "GPU-1111"),
        ("NVIDIA A10G", 24_146_608_128, (8, 6), "GPU-2222"),
    ]

    def init() -> None:
        nvml.calls.append("init")
        if init_error is not None:
            raise _FakeNVMLError(init_error)

    def handle(index: int) -> int:
        if index == broken_index:
            raise _FakeNVMLError(15)
        return index

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = handle
    nvml.nvmlDeviceGetName = lambda h: devices[h][0]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=devices[h][1], free=0)
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: devices[h][2]
    nvml.nvmlDeviceGetUUID = lambda h: devices[h][3]
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12040
    return nvml


def test_fake_nvml_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report = discover_gpus()
    assert report.reason is None
    assert report.driver_version == "550.54.15"
    assert report.cuda_driver_version == "12.4"
    assert report.gpus == (
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 85_520_809_984, "9.0", "550.54.15", "GPU-1111"),
        GpuInfo(1, "NVIDIA A10G", 24_146_608_128, "8.6", "550.54.15", "GPU-2222"),
    )
    assert fake.calls == ["init", "shutdown"]
    assert json.loads(json.dumps(report.to_dict()))["gpus"][0]["compute_capability"] == "9.0"


def test_fake_nvml_one_broken_gpu_keeps_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml(broken_index=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    report = discover_gpus()
    assert [gpu.name for gpu in report.gpus] == ["NVIDIA A10G"]
    assert any(note.startswith("GPU 0:") for note in report.notes)
    assert fake.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (12, "NVML not available: no NVIDIA driver (libnvidia-ml.so.1 not found)"),
        (9, "NVML not available: the NVIDIA kernel driver is not loaded"),
        (999, "NVML init failed: _FakeNVMLError: NVML error 999"),
    ],
)
def test_fake_nvml_init_failure(monkeypatch: pytest.MonkeyPatch, code: int, expected: str) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    fake = _fake_pynvml(init_error=code)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    report = discover_gpus()
    assert report.gpus == ()
    assert report.reason == expected
    assert fake.calls == ["init"]


def test_missing_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import raise ImportError, as if nvidia-ml-py were absent.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = discover_gpus()
    assert report.gpus == ()
    assert report.reason is not None
    assert "nvidia-ml-py" in report.reason


# --------------------------------------------------------------------------- runtimes


def _fake_import(monkeypatch: pytest.MonkeyPatch, dotted: str, load: Callable[[], Any]) -> None:
    """Make importlib.import_module(dotted) call `load`, whatever is installed here."""
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        return load() if name == dotted else real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_missing_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name.split(".")[0] == "torch" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    info = probe_runtime("torch")
    assert info.installed is False
    assert info.usable is False
    assert info.reason is not None and info.reason.startswith("not installed")
    assert info.install_hint == "pip install 'crossinfer[torch]'"
    assert info.devices == ()


@pytest.mark.parametrize(("name", "dotted"), [("torch", "torch"), ("jax", "jax")])
def test_runtime_that_fails_to_import(
    monkeypatch: pytest.MonkeyPatch, name: str, dotted: str
) -> None:
    def load() -> Any:
        raise ImportError("libfake.so: cannot open shared object file")

    if importlib.util.find_spec(dotted) is None:
        pytest.skip(f"{name} is not installed: the missing case is tested above")
    _fake_import(monkeypatch, dotted, load)
    info = probe_runtime(name)
    assert info.installed is True
    assert info.usable is False
    assert info.reason == (
        "installed but failed to import: ImportError: libfake.so: cannot open shared object file"
    )
    assert info.install_hint == f"pip install 'crossinfer[{name}]'"


def test_runtime_whose_device_probe_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def query_available_drivers() -> list[str]:
        raise RuntimeError("HAL registry is empty")

    def load() -> Any:
        warnings.warn("old HAL API", DeprecationWarning, stacklevel=1)
        return SimpleNamespace(query_available_drivers=query_available_drivers)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: object())
    _fake_import(monkeypatch, "iree.runtime", load)
    info = probe_runtime("iree")
    assert info.installed is True
    assert (
        info.reason == "imported, but listing devices failed: RuntimeError: HAL registry is empty"
    )
    # The import-time warning is kept as a note instead of escaping as an error.
    assert "warning: DeprecationWarning: old HAL API" in info.notes


def test_runtime_with_fake_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    def device(platform: str, id: int, kind: str) -> Any:
        return SimpleNamespace(platform=platform, id=id, device_kind=kind)

    def load() -> Any:
        return SimpleNamespace(
            __version__="0.0.test",
            devices=lambda: [device("gpu", 0, "NVIDIA H100"), device("cpu", 0, "cpu")],
        )

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: object())
    _fake_import(monkeypatch, "jax", load)
    info = probe_runtime("jax")
    assert info.usable
    assert info.devices == ("gpu:0 (NVIDIA H100)", "cpu:0")
    assert info.device_ids == ("gpu:0", "cpu:0")


def test_unknown_runtime_name() -> None:
    with pytest.raises(UsageError, match="known runtimes: onnxruntime"):
        probe_runtime("tensorrt")


# --------------------------------------------------------------------------- render


def _render(report: SystemReport) -> str:
    console = Console(record=True, width=120)
    render_report(report, console)
    return console.export_text()


def test_render_real_report() -> None:
    report = discover()
    text = _render(report)
    assert report.cpu.model_name in text
    assert "onnxruntime" in text
    assert "CPUExecutionProvider" in text
    if report.cpu.isa == "x86":
        assert "avx512_vnni" in text
    if report.gpu.reason:
        assert report.gpu.reason in text


def test_render_synthetic_report() -> None:
    parsed = parse_cpuinfo(HASWELL)
    cpu = CpuInfo(
        model_name=parsed.model_name or "",
        vendor=parsed.vendor,
        architecture="x86_64",
        physical_cores=12,
        logical_cores=24,
        total_memory_bytes=64 * 2**30,
        isa=parsed.isa,
        features=parsed.features,
        notes=parsed.notes,
    )
    gpu = GpuReport(
        gpus=(GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, "9.0", "550.54.15", "GPU-1"),),
        driver_version="550.54.15",
        cuda_driver_version="12.4",
    )
    runtimes = (
        RuntimeInfo(
            "onnxruntime", True, "1.20.0", ("CUDAExecutionProvider", "CPUExecutionProvider")
        ),
        RuntimeInfo(
            "torch", False, reason="not installed", install_hint="pip install 'crossinfer[torch]'"
        ),
        RuntimeInfo(
            "jax",
            True,
            "0.4.30",
            reason="installed but failed to import: ImportError: no jaxlib",
            install_hint="pip install 'crossinfer[jax]'",
        ),
    )
    report = SystemReport(
        platform="Linux-test",
        os="Linux",
        python_version="3.11.0",
        python_implementation="CPython",
        crossinfer_version="0.1.0",
        cpu=cpu,
        gpu=gpu,
        onnx=OnnxInfo("1.17.0", 21, 10),
        runtimes=runtimes,
    )
    text = _render(report)
    assert "Intel(R) Xeon(R) CPU E5-2680 v3" in text
    assert "12 physical, 24 logical" in text
    assert "64.0 GiB" in text
    assert "avx512_vnni no" in text
    assert "avx2 yes" in text
    assert NOTE_INT8_NO_VNNI in text
    assert "NVIDIA H100 80GB HBM3" in text and "9.0" in text and "80.0 GiB" in text
    assert "not installed" in text
    # Square brackets must print as text, not vanish as rich markup.
    assert "pip install 'crossinfer[torch]'" in text
    assert "import failed" in text and "no jaxlib" in text
    assert "opsets up to 21" in text


def test_render_unknown_features_and_no_gpu() -> None:
    report = discover(runtimes=[])
    cpu = CpuInfo("Apple M2", None, "arm64", None, 8, 2**34, None, {}, (), "CPU features unknown")
    text = _render(
        SystemReport(
            platform=report.platform,
            os="Darwin",
            python_version=report.python_version,
            python_implementation=report.python_implementation,
            crossinfer_version=None,
            cpu=cpu,
            gpu=GpuReport(reason="NVML not available: no NVIDIA driver"),
            onnx=report.onnx,
            runtimes=(),
        )
    )
    assert "unknown: CPU features unknown" in text
    assert "No NVIDIA GPUs: NVML not available: no NVIDIA driver" in text
    assert "8 logical" in text
