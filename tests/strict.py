"""Strict mode: in CI, a package of the test extra that does not import is a failure.

``FASTMOMENTS_STRICT=1``, or ``CI`` set as CI services set it (.ci/run sets both):
tests/conftest.py makes ``pytest.importorskip`` import the packages below plainly, so
that a comparison with an outside implementation (lion-pytorch, adabelief-pytorch,
pytorch_optimizer, schedulefree, torch) cannot drop out of CI as a skip; tests that
skip for another missing piece of the test environment call :func:`skip_or_fail`.
"""

from __future__ import annotations

import os

import pytest

# what `pip install -e ".[test]"` installs (pyproject.toml's test extra), by import name
TEST_EXTRA_MODULES = frozenset({
    "torch", "lion_pytorch", "adabelief_pytorch", "pytorch_optimizer", "schedulefree", "optax",
    "jax", "mpi4py", "ml_dtypes", "scipy", "matplotlib", "hypothesis", "mkdocs", "numba_cuda",
    "bitsandbytes", "sklearn", "torchao",
})


def is_strict() -> bool:
    """Whether skips for a missing part of the test environment are failures."""
    if os.environ.get("FASTMOMENTS_STRICT", "") not in ("", "0"):
        return True
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """``pytest.skip(reason)``, or ``pytest.fail(reason)`` in strict mode."""
    if is_strict():
        pytest.fail(f"{reason} (strict mode: FASTMOMENTS_STRICT or CI is set)")
    pytest.skip(reason)
