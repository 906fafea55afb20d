"""Test session setup.

- The CUDA kernels are tested under numba's simulator unless a real GPU run is asked
  for with FASTMOMENTS_REAL_GPU=1. The simulator has to be chosen before numba is
  imported, which is why it is set here, at the top of the first conftest.
- Child processes run the fastmoments under test: the folder that holds it goes first
  on ``PYTHONPATH`` for the whole session (tests/children.py).
- Strict mode (``FASTMOMENTS_STRICT=1``, or ``CI`` set as CI services set it; .ci/run
  sets both; tests/strict.py): a test that would skip because a package of the test
  extra does not import fails instead (``pytest.importorskip`` imports those packages
  plainly), so that a comparison with an outside implementation cannot silently drop
  out of CI.
"""

import importlib
import os
import sys

import pytest

if os.environ.get("FASTMOMENTS_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# tests/ holds shared helpers (reference.py, cases.py) imported as top-level modules
sys.path.insert(0, os.path.dirname(__file__))

from children import child_env  # noqa: E402  (after the simulator is chosen)
from strict import TEST_EXTRA_MODULES, is_strict  # noqa: E402

os.environ.update({k: v for k, v in child_env().items() if k == "PYTHONPATH"})

_importorskip = pytest.importorskip


def _importorskip_or_import(modname, *args, **kwargs):
    if is_strict() and modname.split(".")[0] in TEST_EXTRA_MODULES:
        return importlib.import_module(modname)  # ImportError: the test fails
    return _importorskip(modname, *args, **kwargs)


pytest.importorskip = _importorskip_or_import


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
