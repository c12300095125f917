"""Speed and memory benchmarks: each prints a table of ratios against a baseline measured in the same run."""

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux keeps `ru_maxrss` across exec, so a spawned worker would report
    at least its parent's size at fork time; the memory map's own high-water mark (`VmHWM`) starts afresh."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux, bytes on macOS
