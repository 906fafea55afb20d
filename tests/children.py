"""Child processes that run the fastmoments under test, whatever their working directory.

A child Python (``python -c``, ``python -m fastmoments``, the ``fastmoments`` console
script, an example run as a script) imports whatever its ``sys.path`` finds first, which
need not be the fastmoments this test session imported: another installed copy, or a
checkout in the child's working directory. :func:`child_env` puts the folder that holds
the fastmoments under test first on ``PYTHONPATH`` (tests/conftest.py does it for the
whole session); :func:`run_child` also checks, through tests/child_probe/sitecustomize.py,
that the child imported exactly that fastmoments.
"""

from __future__ import annotations

import os
import site
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

import fastmoments

FASTMOMENTS_FILE = os.path.abspath(fastmoments.__file__)
# the folder that holds the package folder: the checkout (editable install, or a run
# from the repository) or site-packages
ROOT = os.path.dirname(os.path.dirname(FASTMOMENTS_FILE))
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child_probe")


def _site_folders() -> set[str]:
    folders = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    folders.append(site.getusersitepackages())
    return {os.path.realpath(f) for f in folders}


def _prepend(path: str, folder: str) -> str:
    parts = [p for p in path.split(os.pathsep) if p and os.path.realpath(p) !=
             os.path.realpath(folder)]
    return os.pathsep.join([folder, *parts])


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the folder of the fastmoments
    under test first on ``PYTHONPATH``. Not when that folder is a site-packages folder:
    the child, the same interpreter, has it on its path already (and site-packages
    before the standard library could shadow a module of it)."""
    env = dict(os.environ if env is None else env)
    if os.path.realpath(ROOT) not in _site_folders():
        env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH", ""), ROOT)
    return env


def same_file(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def run_child(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` in
    :func:`child_env`, then an assertion that the child imported the fastmoments under
    test (its ``fastmoments.__file__``, written at the child's exit)."""
    env = child_env(env)
    with tempfile.TemporaryDirectory(prefix="fastmoments-child-") as folder:
        report = os.path.join(folder, "fastmoments-file")
        env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH", ""), PROBE)
        env["FASTMOMENTS_CHILD_REPORT"] = report
        done = subprocess.run(list(cmd), env=env, capture_output=True, text=True, **kwargs)
        imported = None
        if os.path.exists(report):
            with open(report, encoding="utf-8") as handle:
                imported = handle.read()
    assert same_file(imported, FASTMOMENTS_FILE), (
        f"the child imported {imported!r}, not the fastmoments under test "
        f"{FASTMOMENTS_FILE!r}\nstderr:\n{done.stderr}")
    return done
