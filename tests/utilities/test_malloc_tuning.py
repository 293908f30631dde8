"""samunet's allocator settings: big buffers are reused instead of page-faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
import samunet
from samunet.utilities.malloc_tuning import tune_malloc
torch.set_num_threads(1)
net = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
x = torch.randn(1, 32, 256, 256)
with torch.no_grad():
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net(x)
print(tune_malloc(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value: str) -> tuple[bool, int]:
    env = {**os.environ, "SAMUNET_MALLOC_TUNING": env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_big_buffers_are_reused_and_the_switch_turns_it_off():
    tuned, faults_on = _probe("1")
    untuned, faults_off = _probe("0")
    assert tuned and not untuned
    pages = 32 * 256 * 256 * 4 // 4096  # one 8 MiB activation
    assert faults_off > 10 * pages  # activations page-faulted in afresh at every pass (mmap/munmap)
    assert faults_on < faults_off / 10  # reused from the heap


TRIM_PROBE = """
import samunet, torch
from samunet.utilities.malloc_tuning import trim_heap
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
base = rss()
x = [torch.ones(64, 1024, 1024) for _ in range(2)]  # 512 MiB on the heap, touched
del x
held = rss()
print(held - base, int(trim_heap()), rss() - base)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_heap_returns_freed_memory():
    """With the settings, freed buffers stay resident until trim_heap hands them back."""
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "SAMUNET_MALLOC_TUNING": "1"})
    held, trimmed, after = (int(v) for v in out.stdout.split())
    assert held > 400 and trimmed == 1 and after < 100
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "SAMUNET_MALLOC_TUNING": "0"})
    assert out.stdout.split()[1] == "0"  # without the settings there is nothing to do
