import sys
from pathlib import Path

import psutil
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session():
    """What a test started and lost track of (a failed assertion before its cleanup) is stopped, and named."""
    yield
    left = psutil.Process().children(recursive=True)
    for proc in left:
        try:
            print(f"\nstopping a process a test left behind: pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
