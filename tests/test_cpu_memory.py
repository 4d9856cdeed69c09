"""corun.cpu_memory: large CPU tensors stop being page-faulted in again once freed memory is retained."""
import json
import subprocess
import sys

import pytest
import torch

from corun import cpu_memory

pytestmark = pytest.mark.skipif(not cpu_memory.available(), reason="needs Linux with glibc (mallopt)")

# A fresh interpreter: the allocator's state is process-wide, and this process's heap may already hold
# large free blocks from other tests.
_PROBE = r"""
import json, resource, torch
from corun import cpu_memory

MIBS = (40, 72, 96, 56)

def step():  # like a training step: several large activations, then all of them freed
    ts = [torch.ones(m * 2**18) for m in MIBS]  # written in full: every page is touched
    del ts

def faults_per_step(warmup=8, n=4):
    for _ in range(warmup):  # the heap settles in the first few steps (measured: 6 here)
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

default = faults_per_step()
applied = cpu_memory.retain_freed_memory()
retained = faults_per_step()
released = cpu_memory.release_retained_memory()
print(json.dumps(dict(default=default, retained=retained, applied=applied, released=released,
                      retaining=cpu_memory.retaining())))
"""


@pytest.mark.slow
def test_retained_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    pages = (40 + 72 + 96 + 56) * 2**20 // 4096
    assert r["applied"] and r["released"] and not r["retaining"]
    # glibc's default maps every block above its mmap threshold afresh: each round faults in all pages
    assert r["default"] > 0.5 * pages
    assert r["retained"] < 0.05 * pages


def test_results_do_not_depend_on_the_allocator():
    x = torch.randn(3, 1 << 21, generator=torch.Generator().manual_seed(0))
    b = torch.nn.functional.gelu(x * 2 + 1).sum(0)
    was = cpu_memory.retaining()
    try:
        cpu_memory.retain_freed_memory()
        a = torch.nn.functional.gelu(x * 2 + 1).sum(0)
    finally:
        if not was:
            cpu_memory.release_retained_memory()
    assert torch.equal(a, b)
