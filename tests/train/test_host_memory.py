"""A freed activation-sized tensor goes back to the OS instead of staying in the heap."""

import platform
import subprocess
import sys
import textwrap

import pytest

# In a fresh process: in the test session's own, earlier tests leave large free chunks in the
# heap, and glibc serves a new block from those before it considers a mapping of its own.
CHECK = textwrap.dedent("""
    from pathlib import Path
    import torch
    from tunewright.train.host_memory import release_freed_tensors_to_os

    def resident_mb():
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    assert release_freed_tensors_to_os() == (SET == "1")
    kept = []
    for _ in range(3):  # without the option, the heap keeps these once glibc's threshold has risen
        before = resident_mb()
        tensor = torch.ones(4 << 20)  # 16 MiB, below glibc's 32 MiB dynamic-threshold ceiling
        if SET == "1":  # its own fresh mapping each time (the default may reuse resident heap)
            assert resident_mb() > before + 12
        del tensor
        kept.append(resident_mb() - before)
    print(max(kept[1:]))
""")


def resident_after_free(set_option: bool) -> float:
    code = CHECK.replace("SET", repr("1" if set_option else "0"))
    if not set_option:
        code = code.replace("release_freed_tensors_to_os() == ", "True or ")
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc option")
def test_freed_tensors_leave_the_process():
    assert resident_after_free(set_option=True) < 4
    assert resident_after_free(set_option=False) > 12  # the control: glibc's default keeps them
