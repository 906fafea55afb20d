"""Test session setup.

The CUDA kernels are tested under numba's simulator unless a real GPU run is asked
for with FASTMOMENTS_REAL_GPU=1. The simulator has to be chosen before numba is
imported, which is why it is set here, at the top of the first conftest.
"""

import os
import sys

import pytest

if os.environ.get("FASTMOMENTS_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# tests/ holds shared helpers (reference.py, cases.py) imported as top-level modules
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def torch64():
    """torch with float64 as default dtype (torch keeps step and mu_product in it)."""
    torch = pytest.importorskip("torch")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def parallel_loops_compiled_in_the_step():
    """Tests run the loop the library chose from the first step on: a parallel loop is
    compiled by the step itself, not in the background (``config.background_compile``,
    which tests/test_backend.py covers), so that the parallel kernels are what the
    tests of parallel paths exercise."""
    import fastmoments as fm

    old = fm.config.background_compile
    fm.config.background_compile = False
    yield
    fm.config.background_compile = old
