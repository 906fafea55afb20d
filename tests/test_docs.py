"""The documentation site: it builds with ``mkdocs build --strict``, and its code runs.

The build test needs the ``docs`` extra (mkdocs-material, mkdocstrings[python]) and is
skipped without mkdocs. The snippet tests need no mkdocs: every ```` ```python ```` block
of a page is executed, in order, in one namespace per page, as a reader would run them
(```` ```py ```` marks code that is shown but not run: CuPy, GPU-only torch code).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

import fastmoments as fm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None
FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)

#: what the code of a page needs beyond fastmoments (pages not listed need nothing)
NEEDS = {"from-torch.md": "torch", "cuda.md": "cuda"}


def _python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [textwrap.dedent(m.group(2)) for m in FENCE.finditer(text)]


#: every page with python blocks, as a path relative to docs/
PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")
               if FENCE.search(p.read_text(encoding="utf-8")))


@pytest.mark.skipif(not HAS_MKDOCS, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def page(path: str) -> str:
        file = site / path
        assert file.is_file(), f"{path} was not built"
        return file.read_text(encoding="utf-8")

    assert "FlatParams" in page("index.html")
    adam = page("rules/adam/index.html")
    assert "AMSGrad" in adam and "amsgrad_bias_correction" in adam and "arithmatex" in adam
    assert "initial_accumulator_value" in page("rules/yogi/index.html")
    api = page("api/index.html")
    for name in ("fastmoments.Adam", "fastmoments.Yogi", "fastmoments.FlatParams",
                 "fastmoments.schedules.Cosine", "fastmoments.optim.base.Optimizer.step"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    assert "__cuda_array_interface__" in page("from-torch/index.html")
    assert "NUMBA_ENABLE_CUDASIM" in page("cuda/index.html")
    for path in ("getting-started/index.html", "tutorials/index.html", "rules/index.html"):
        page(path)


def test_pages_with_code_are_found():
    assert {"index.md", "getting-started.md", "from-torch.md", "cuda.md",
            "rules/adam.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page, monkeypatch, capsys):
    needs = NEEDS.get(page)
    if needs == "torch":
        pytest.importorskip("torch")
    if needs == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        from numba import cuda

        if not cuda.is_available():
            pytest.skip("needs a GPU or NUMBA_ENABLE_CUDASIM=1")
    # pages may tune fm.config and numba's threads: restore both afterwards
    for name in type(fm.config).__slots__:
        monkeypatch.setattr(fm.config, name, getattr(fm.config, name))
    threads = numba.get_num_threads()
    namespace: dict = {"__name__": f"docs:{page}"}
    try:
        for i, code in enumerate(_python_blocks(page)):
            exec(compile(code, f"docs/{page} (python block {i + 1})", "exec"), namespace)
    finally:
        numba.set_num_threads(threads)
    capsys.readouterr()
