"""What this machine can do: the CPU's vector capability, native bf16 or not, and its measured matmul peak.

Run times only mean something next to the machine that produced them, so the demo's report and the benchmarks name
it with these figures. The peak is measured the way a user would check it by hand: square matmuls of growing size,
each the median of three calls after a warm-up, the best GFLOP/s kept.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without either, a CPU emulates bf16 matmuls, 10-100x slower than fp32."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def cpu_capability() -> str:
    """The widest vector instruction set torch's CPU kernels use here (e.g. AVX2, AVX512)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, budget_s: float = 3.0,
                       sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> float:
    """Best GFLOP/s of square `dtype` matmuls on the CPU with torch's current thread count. Sizes grow until
    `budget_s` is spent, so an emulated bf16 (about 1 GFLOP/s) stops after the small sizes instead of taking
    minutes."""
    best, spent = 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=generator).to(dtype)
        b = torch.randn(n, n, generator=generator).to(dtype)
        start = time.perf_counter()
        a @ b  # warm-up: first-call allocation and kernel selection
        times = []
        for _ in range(3):
            tick = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - tick)
        spent += time.perf_counter() - start
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
        if spent + 8 * sum(times) > budget_s:  # the next size costs ~8x this one
            break
    return best


def machine_summary(measure: bool = True) -> dict:
    """The machine line: CPU model, capability, native bf16, threads and (if `measure`) the fp32 / bf16 peaks."""
    summary = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "native_bf16": cpu_has_native_bf16(),
               "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0)
               if torch.cuda.is_available() else None}
    if measure:
        summary["fp32_gflops"] = round(matmul_peak_gflops(torch.float32), 1)
        summary["bf16_gflops"] = round(matmul_peak_gflops(torch.bfloat16), 1)
    return summary


def machine_line(summary: dict) -> str:
    """One line for reports: `AMD EPYC 7B13, AVX512, native bf16, 2 threads: fp32 175 / bf16 390 GFLOP/s`."""
    bf16 = "native bf16" if summary["native_bf16"] else "no native bf16 (emulated)"
    line = f"{summary['cpu']}, {summary['cpu_capability']}, {bf16}, {summary['threads']} threads"
    if "fp32_gflops" in summary:
        line += f": matmul fp32 {summary['fp32_gflops']:.0f} / bf16 {summary['bf16_gflops']:.0f} GFLOP/s"
    if summary.get("cuda"):
        line += f"; GPU {summary['cuda']}"
    return line
