"""What machine a figure was measured on: benchmarks print it and training writes it into model cards."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(with_torch: bool = True) -> str:
    """One line: CPU model, logical CPUs, OS and architecture, Python, torch and its device, load average."""
    parts = [cpu_model(), f"{os.cpu_count()} logical CPUs", f"{platform.system()} {platform.machine()}",
             f"Python {platform.python_version()}"]
    if with_torch:
        import torch

        device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads, {device})")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.2f}")
    return "; ".join(parts)
