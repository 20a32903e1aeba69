"""How benchmarks print: the machine they ran on, then a plain table."""

import os
import platform

from l2c.reports import print_table  # noqa: F401  (benchmarks print with it)


def machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPUs ({cpu}){memory}, Python {platform.python_version()}"
