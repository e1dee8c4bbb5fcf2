import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: 2 threads on a loaded 2-core machine are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny():
    from advdm.models import builtin

    return builtin.build("tiny")


@pytest.fixture(scope="session")
def mimicry():
    """bench/mimicry.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("mimicry", ROOT / "bench" / "mimicry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
