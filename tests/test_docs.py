"""The documentation site: it builds with ``mkdocs build --strict``, its code runs and
prints what the page shows.

The build test needs the ``docs`` extra (mkdocs-material, mkdocstrings[python]) and is
skipped without mkdocs. The snippet tests need no mkdocs: every ```` ```python ```` block
of a page is executed, in order, in one namespace per page, as a reader would run them
(```` ```py ```` marks code that is shown but not run: CuPy, GPU-only torch code).

What the code prints is compared with what the page shows, as doctest compares (``...``
stands for any text, and any run of whitespace, line breaks included, for any other):

- a line that ends with a comment ``# -> text`` shows what that line prints (a line run
  several times, in a loop, prints all its outputs in turn);
- a ```` ```text ```` block right after a python block (blank lines between them only)
  shows what the python block's other lines print, in order.

Every print must be shown: a page that prints what it does not show fails, and so does
one that shows what nothing prints.
"""

from __future__ import annotations

import doctest
import importlib.util
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import numba
import pytest

import fastmoments as fm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None
FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
#: a ```text block right after a python block (from the end of the python block's fence)
OUTPUT = re.compile(r"[ \t]*\n(?:[ \t]*\n)*( *)```text\n(.*?)^\1```", re.S | re.M)
SHOWN = "# ->"  # ends a line: what the line prints

#: what the code of a page needs beyond fastmoments (pages not listed need nothing)
NEEDS = {"from-torch.md": "torch", "torch.md": "torch", "cuda.md": "cuda"}


def _blocks_and_output(text: str) -> list[tuple[str, int, str | None]]:
    """Each python block of a page: (code, its first line in the page, the text of the
    ```text block right after it or None)."""
    blocks = []
    for m in FENCE.finditer(text):
        shown = OUTPUT.match(text, m.end())
        blocks.append((textwrap.dedent(m.group(2)), text.count("\n", 0, m.start(2)) + 1,
                       textwrap.dedent(shown.group(2)) if shown else None))
    return blocks


def _shown_on_lines(code: str) -> dict[int, str]:
    """{line of the block: the text after its ``# ->`` comment}."""
    return {tok.start[0]: tok.string[len(SHOWN):].strip()
            for tok in tokenize.generate_tokens(io.StringIO(code).readline)
            if tok.type == tokenize.COMMENT and tok.string.startswith(SHOWN)}


def _differs(shown: str, printed: str) -> str | None:
    """None when ``printed`` is what ``shown`` shows (doctest's ELLIPSIS and
    NORMALIZE_WHITESPACE), else doctest's report of the difference."""
    checker, flags = doctest.OutputChecker(), doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    want = shown.rstrip("\n") + "\n"
    if checker.check_output(want, printed, flags):
        return None
    return checker.output_difference(doctest.Example("", want), printed, flags)


def _run_and_compare(text: str, label: str, namespace: dict) -> list[str]:
    """Run the python blocks of ``text`` in ``namespace``, in order; return what differs
    between what they print and what the page shows (empty: all of it agrees)."""
    printed: list[tuple[str, int, str]] = []  # (block's file name, line, text) in order

    def recording_print(*args, sep=" ", end="\n", file=None, flush=False):
        if file is not None and file is not sys.stdout:
            print(*args, sep=sep, end=end, file=file, flush=flush)
            return
        out = io.StringIO()
        print(*args, sep=sep, end=end, file=out)
        caller = sys._getframe(1)
        printed.append((caller.f_code.co_filename, caller.f_lineno, out.getvalue()))

    namespace["print"] = recording_print
    blocks = _blocks_and_output(text)
    names = [f"docs/{label} (python block {i + 1})" for i in range(len(blocks))]
    for name, (code, _, _) in zip(names, blocks):
        exec(compile(code, name, "exec"), namespace)

    problems = []
    for name, (code, first, shown_after) in zip(names, blocks):
        mine = [(line, out) for file, line, out in printed if file == name]
        on_lines = _shown_on_lines(code)
        for line, shown in on_lines.items():
            where = f"docs/{label}:{first + line - 1}"
            out = "".join(o for n, o in mine if n == line)
            if not out:
                problems.append(f"{where}: shows {shown!r}, but the line printed nothing")
            elif (diff := _differs(shown, out)) is not None:
                problems.append(f"{where}: {diff}")
        rest = "".join(o for n, o in mine if n not in on_lines)
        where = f"docs/{label}:{first} (python block)"
        if shown_after is None:
            if rest:
                problems.append(f"{where} printed what the page does not show (add ``# ->`` "
                                f"or a ```text block after the block):\n{rest}")
        elif not rest:
            problems.append(f"{where}: the ```text block after it shows what nothing prints")
        elif (diff := _differs(shown_after, rest)) is not None:
            problems.append(f"{where}, the ```text block after it: {diff}")
    return problems


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
        problems = _run_and_compare((DOCS / page).read_text(encoding="utf-8"), page, namespace)
    finally:
        numba.set_num_threads(threads)
    capsys.readouterr()
    assert not problems, "\n\n".join(problems)


SAMPLE_PAGE = """
Some prose.

```python
print(1 + 1)                 # -> 2
for i in range(3):
    print(i, [0.5] * 2)      # -> 0 [0.5, 0.5] 1 [0.5, 0.5] 2 ...
print("shown")
print("below")
```

```text
shown
below
```

  ```python
  def f():
      print("from f")        # -> from f
  f()
  ```
"""


def test_shown_output_is_compared():
    """The comparison itself: what agrees passes; a wrong value, an output nobody shows
    and a shown output that nothing prints are each reported."""
    assert _run_and_compare(SAMPLE_PAGE, "sample.md", {}) == []
    wrong = SAMPLE_PAGE.replace("# -> 2", "# -> 3")
    assert [p.split(":")[1] for p in _run_and_compare(wrong, "sample.md", {})] == ["5"]
    wrong = SAMPLE_PAGE.replace("shown\nbelow\n", "shown\nbelow\nmore\n")
    assert "the ```text block after it" in "".join(_run_and_compare(wrong, "sample.md", {}))
    unshown = SAMPLE_PAGE.replace("```text", "```bash")
    assert "does not show" in "".join(_run_and_compare(unshown, "sample.md", {}))
    silent = SAMPLE_PAGE.replace('print(1 + 1)', '1 + 1')
    assert "printed nothing" in "".join(_run_and_compare(silent, "sample.md", {}))
