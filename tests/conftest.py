"""Fixtures shared by the whole suite."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread: on a 2-core machine shared with other torch processes, multi-threaded
    kernels oversubscribe the cores and slow each other down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
