"""One CPU thread for the tests that import `one_thread`: tiny networks run fastest, and identically from run to
run, on one thread, the more so on a busy machine."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
