"""What `train.mixed_precision: auto` resolves to: bf16 where the device computes bf16 in hardware, else no.

The decision is a pure function of what the device reports (`Bf16Support`), so tests substitute the report and no
result depends on the machine that runs them. `auto` resolves before anything keys on it: the run config hashes the
resolved value (a checkpoint written under `auto` that resolved to bf16 resumes under `bf16`, and one from another
machine where it resolved otherwise is redone), and training then treats it exactly as that value. Imports torch
only to read this machine's report, so `wpo config` stays light.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Bf16Support:
    """What a device reports about computing in bf16."""

    device: str  # "cpu", or the accelerator's type ("cuda", "xpu", ...)
    amx: bool = False  # the CPU's AMX tiles: bf16 matrix units
    avx512_bf16: bool = False  # the CPU's AVX512-BF16 dot-product instructions
    accelerator_bf16: bool = False  # the accelerator computes bf16 (torch.cuda.is_bf16_supported and the like)


@functools.cache
def this_machine() -> Bf16Support:
    """This machine's report: its accelerator's, when it has one (training runs there), else its CPU's."""
    import torch

    if torch.accelerator.is_available():
        device = torch.accelerator.current_accelerator().type
        supported = getattr(getattr(torch, device, None), "is_bf16_supported", None)
        return Bf16Support(device, accelerator_bf16=bool(supported and supported()))
    return Bf16Support("cpu", amx=torch.cpu._is_amx_tile_supported(), avx512_bf16=torch.cpu._is_avx512_bf16_supported())


def auto_mixed_precision(support: Bf16Support) -> tuple[str, str]:
    """bf16 or no, and why. A CPU without bf16 units runs bf16 matmuls in a reference kernel many times slower than
    fp32 (docs/performance.md), so it stays in fp32."""
    if support.device == "cpu":
        if support.amx:
            return "bf16", "this CPU has AMX bf16 units"
        if support.avx512_bf16:
            return "bf16", "this CPU has AVX512-BF16 units"
        return "no", "this CPU has no bf16 units (AMX or AVX512-BF16): fp32 is faster"
    if support.accelerator_bf16:
        return "bf16", f"this {support.device} device supports bf16"
    return "no", f"this {support.device} device does not support bf16"


def resolve_mixed_precision(written: str) -> str:
    """The value a training runs and is hashed with: `auto` resolved on this machine, any other value as written."""
    return auto_mixed_precision(this_machine())[0] if written == "auto" else written
