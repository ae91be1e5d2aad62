"""What this box can do: cores, memory, runtimes and ONNX Runtime execution providers."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from edgekernel.protocol import Capabilities

_RUNTIME_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "litert": "ai-edge-litert",
    "tflite-runtime": "tflite-runtime",
}


def _meminfo() -> dict[str, int]:
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    info[key] = int(fields[0]) * 1024
    except OSError:
        pass
    return info


def total_ram() -> int:
    info = _meminfo()
    if "MemTotal" in info:
        return info["MemTotal"]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def free_ram() -> int:
    return _meminfo().get("MemAvailable", 0)


def load_1m() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def runtimes() -> dict[str, str]:
    found = {}
    for name, package in _RUNTIME_PACKAGES.items():
        try:
            found[name] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def onnx_providers() -> list[str]:
    try:
        import onnxruntime  # noqa: PLC0415 (heavy import, only when asked)
    except ImportError:
        return []
    providers: list[str] = onnxruntime.get_available_providers()
    return providers


def accelerators(providers: list[str]) -> list[str]:
    """Accelerators besides the CPU that a runtime can reach here."""
    names = {
        "CUDAExecutionProvider": "cuda",
        "TensorrtExecutionProvider": "tensorrt",
        "OpenVINOExecutionProvider": "openvino",
        "CoreMLExecutionProvider": "coreml",
        "QNNExecutionProvider": "qnn",
        "ROCMExecutionProvider": "rocm",
        "DmlExecutionProvider": "directml",
    }
    found = [names[p] for p in providers if p in names]
    if os.path.exists("/dev/apex_0") or os.path.exists("/dev/bus/usb/edgetpu"):
        found.append("edgetpu")
    return found


def detect() -> Capabilities:
    providers = onnx_providers()
    return Capabilities(
        cores=os.cpu_count() or 1,
        ram_bytes=total_ram(),
        accelerators=accelerators(providers),
        runtimes=runtimes(),
        onnx_providers=providers,
        arch=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
    )
