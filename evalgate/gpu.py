"""The NVML handle of the GPU this process's CUDA calls device 0.

NVML numbers a host's cards by PCI bus and ignores `CUDA_VISIBLE_DEVICES`; CUDA numbers only the cards
that variable lists. On a host of several GPUs where a run is pinned to one (`CUDA_VISIBLE_DEVICES=1`),
NVML's index 0 is another card, and the free-memory check and the idle-share sampler read that card. The
mapping is vLLM's own (`vllm.platforms.cuda`: an entry is an NVML index or a `GPU-`/`MIG-` UUID), done here
because the scheduler asks before any vLLM import.
"""
from __future__ import annotations

import os


def visible_device():
    """The NVML handle of the first card in `CUDA_VISIBLE_DEVICES` (NVML's index 0 when it is unset),
    or None without NVML (a CPU host) or when the variable hides every card. Initialises NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML here
        return None
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    try:
        if first.startswith(("GPU-", "MIG-")):
            return pynvml.nvmlDeviceGetHandleByUUID(first)
        index = int(first)
        return pynvml.nvmlDeviceGetHandleByIndex(index) if index >= 0 else None
    except Exception:  # noqa: BLE001 - empty, "-1", or a card NVML does not know: none visible
        return None


def sm_clock_mhz(handle) -> float | None:
    """The card's SM clock now, in MHz (None without a handle or when NVML cannot tell). Read once after
    each round of a load level: the A/A comparison asks whether the card, not the engine, ran slower."""
    if handle is None:
        return None
    try:
        import pynvml

        return float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except Exception:  # noqa: BLE001 - a card or driver without the query
        return None
