"""corun.cpu_memory: large CPU tensors stop being page-faulted in again once freed memory is retained."""
import resource

import pytest
import torch

from corun import cpu_memory

pytestmark = pytest.mark.skipif(not cpu_memory.available(), reason="needs Linux with glibc (mallopt)")


def _faults_per_alloc(n: int = 4, mib: int = 96) -> float:
    """Minor page faults per allocate-fill-free of a ``mib`` MiB tensor (after one untimed round)."""
    numel = mib * 2**20 // 4
    torch.ones(numel)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.ones(numel)  # written in full, so every page is touched
        del t
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def test_retained_memory_is_reused_without_page_faults():
    pages = 96 * 2**20 // 4096
    try:
        assert cpu_memory.system_default_memory()
        assert not cpu_memory.retaining()
        default = _faults_per_alloc()
        assert cpu_memory.retain_freed_memory()
        assert cpu_memory.retaining()
        retained = _faults_per_alloc()
    finally:
        cpu_memory.system_default_memory()
    # glibc's default maps every block above 32 MiB afresh: each round faults in all of its pages
    assert default > 0.5 * pages
    assert retained < 0.05 * pages


def test_results_do_not_depend_on_the_allocator():
    x = torch.randn(3, 1 << 21, generator=torch.Generator().manual_seed(0))
    try:
        cpu_memory.retain_freed_memory()
        a = torch.nn.functional.gelu(x * 2 + 1).sum(0)
    finally:
        cpu_memory.system_default_memory()
    b = torch.nn.functional.gelu(x * 2 + 1).sum(0)
    assert torch.equal(a, b)
