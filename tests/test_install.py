"""The installation: where numba's cache of the compiled loops goes, which fastmoments a
child process imports, and the test extra.

The README's two commands, run in order (``pip install . && fastmoments demo``, then
``pip install -e ".[test]" && python -m pytest -q``), once left a broken install: the
demo made numba write its cache into ``site-packages/fastmoments/**/__pycache__``, the
editable reinstall removed the package's files but not those, and the folder left
behind, without ``__init__.py``, was imported as an empty namespace package from any
other folder. .ci/run runs those two commands in a fresh virtual environment; these
tests check the cause (no cache file inside the package) and the symptom.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import warnings

import pytest
from children import FASTMOMENTS_FILE, ROOT, child_env, same_file
from numba.core import config as numba_config
from numba.core.caching import NullCache
from numba.core.dispatcher import Dispatcher
from strict import TEST_EXTRA_MODULES, is_strict, skip_or_fail

import fastmoments as fm
from fastmoments.kernels.cache import cached_njit, uses_fastmoments_cache
from fastmoments.kernels.compile import cpu_loop

PACKAGE = os.path.dirname(FASTMOMENTS_FILE)


def _numba_cache_files(folder: str) -> dict[str, int]:
    found = {}
    for where, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".nbi", ".nbc")):
                path = os.path.join(where, name)
                found[path] = os.stat(path).st_mtime_ns
    return found


# ------------------------------------------------------------------ the cache
def test_every_jitted_function_of_the_package_caches_in_config_cache_dir():
    """No ``njit(cache=True)`` in the package: numba would cache it in the package's
    own folder (``__pycache__``), which outlives an uninstall."""
    names = [m.name for m in pkgutil.walk_packages(fm.__path__, "fastmoments.")
             if m.name != "fastmoments.__main__"]
    checked = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as error:  # an optional dependency (mpi4py, ...), not ours
            if (error.name or "fastmoments").startswith("fastmoments"):
                raise
            continue
        for attr, value in vars(module).items():
            if isinstance(value, Dispatcher) and inspect.getmodule(value.py_func) is module:
                assert uses_fastmoments_cache(value) or isinstance(value._cache, NullCache), (
                    f"{name}.{attr} caches with numba's default locator "
                    f"({type(value._cache).__name__}): use cached_njit")
                checked.append(attr)
    assert len(checked) >= 5, checked  # host, segmented and multipass helpers
    assert uses_fastmoments_cache(cpu_loop(lambda x: x, parallel=False))  # generated loops


_FUNCTION = """
import numba

from fastmoments.kernels.cache import cached_njit


@cached_njit()
def add_one(x):
    return x + 1


@numba.njit(cache=True)
def users_own(x):  # not fastmoments': numba caches it where numba always does
    return x + 2
"""


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cache_dir():
    old = fm.config.cache_dir
    yield fm.config
    fm.config.cache_dir = old


def test_the_cache_folder_is_read_when_a_function_is_first_compiled(tmp_path, cache_dir):
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "fm_cache_probe.py"
    source.write_text(_FUNCTION)
    fm.config.cache_dir = tmp_path / "cache"  # after the definition: read at compile time
    module = _import_file(source, "fm_cache_probe_1")
    assert module.add_one(1) == 2
    files = _numba_cache_files(str(tmp_path / "cache"))
    assert any(p.endswith(".nbi") for p in files) and any(p.endswith(".nbc") for p in files)
    assert module.add_one.stats.cache_path.startswith(str(tmp_path / "cache" / "src_"))
    assert _numba_cache_files(str(tmp_path / "src")) == {}
    assert not uses_fastmoments_cache(module.users_own)
    assert type(module.users_own._cache).__name__ == "FunctionCache"
    assert module.users_own(1) == 3
    if not numba_config.CACHE_DIR:  # numba's default: beside the source
        assert module.users_own.stats.cache_path == str(tmp_path / "src" / "__pycache__")
    files = _numba_cache_files(str(tmp_path / "cache"))
    # a second definition (as in a new process) loads it
    again = _import_file(source, "fm_cache_probe_2")
    assert again.add_one(1) == 2
    assert sum(again.add_one.stats.cache_hits.values()) == 1

    fm.config.cache_dir = None  # no on-disk cache
    other = _import_file(source, "fm_cache_probe_3")
    assert other.add_one(2.5) == 3.5
    assert other.add_one.stats.cache_path is None
    assert sum(other.add_one.stats.cache_hits.values()) == 0
    assert _numba_cache_files(str(tmp_path / "cache")) == files


def test_an_unwritable_cache_folder_warns_once_and_compiles(tmp_path, cache_dir):
    source = tmp_path / "fm_cache_probe.py"
    source.write_text(_FUNCTION)
    (tmp_path / "a-file").write_text("")
    fm.config.cache_dir = tmp_path / "a-file" / "cache"  # cannot be created
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        assert _import_file(source, "fm_cache_probe_4").add_one(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _import_file(source, "fm_cache_probe_5").add_one(1) == 2


def test_cache_dir_default_and_setting(tmp_path, monkeypatch, cache_dir):
    monkeypatch.delenv("FASTMOMENTS_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    del fm.config.cache_dir
    if sys.platform.startswith("linux"):
        assert fm.config.cache_dir == str(tmp_path / "xdg" / "fastmoments" / fm.__version__)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    del fm.config.cache_dir
    assert fm.config.cache_dir == str(tmp_path / "numba")  # numba's setting is respected
    monkeypatch.setenv("FASTMOMENTS_CACHE_DIR", str(tmp_path / "fm"))
    del fm.config.cache_dir
    assert fm.config.cache_dir == str(tmp_path / "fm")  # ours first
    assert f"cache_dir={str(tmp_path / 'fm')!r}" in repr(fm.config)
    fm.config.cache_dir = "relative"
    assert fm.config.cache_dir == os.path.abspath("relative")
    with pytest.raises(ValueError, match="cache_dir"):
        fm.config.cache_dir = ""
    with pytest.raises(TypeError):
        cached_njit(cache=True)


_STEPS = """
import json, sys
import numpy as np
import numba
import fastmoments as fm
from fastmoments.kernels import host

fm.config.background_compile = False
flat = fm.FlatParams([np.ones(10, np.float32), np.ones(3, np.float32)])
adam = fm.AdamW(flat, lr=0.1, max_grad_norm=1.0)  # a generated loop and a host helper
flat.grad[:] = 1.0
adam.step()
lamb = fm.LAMB([np.ones(5), np.ones(4)], lr=0.1)  # segmented passes, a module-level loop
lamb.step([np.ones(5), np.ones(4)])
loop = host._sum_squares_serial  # max_grad_norm's sum of squares
print(json.dumps({"hits": sum(loop.stats.cache_hits.values()),
                  "path": loop.stats.cache_path, "cache_dir": fm.config.cache_dir}))
"""


def test_a_process_caches_into_cache_dir_and_the_next_loads_it(tmp_path):
    """A fresh process writes nothing inside the installed package; the next process
    loads the loops from the cache folder (FASTMOMENTS_CACHE_DIR, else NUMBA_CACHE_DIR)."""
    before = _numba_cache_files(PACKAGE)
    env = child_env()
    env.pop("NUMBA_CACHE_DIR", None)
    runs = []
    for variable, folder in (("FASTMOMENTS_CACHE_DIR", "fm"), ("FASTMOMENTS_CACHE_DIR", "fm"),
                             ("NUMBA_CACHE_DIR", "numba")):
        env.pop("FASTMOMENTS_CACHE_DIR", None)
        env[variable] = str(tmp_path / folder)
        done = subprocess.run([sys.executable, "-c", _STEPS], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [r["cache_dir"] for r in runs] == [str(tmp_path / f) for f in ("fm", "fm", "numba")]
    assert runs[0]["hits"] == 0 and runs[1]["hits"] == 1  # compiled, then loaded
    for run in runs:
        assert run["path"].startswith(run["cache_dir"] + os.sep)
    names = [os.path.basename(p) for p in _numba_cache_files(str(tmp_path / "fm"))]
    for part in ("elementwise.adam", "_sum_squares", "lamb_moments", "_lamb_trust"):
        assert any(part in n for n in names), (part, names)
    assert _numba_cache_files(PACKAGE) == before  # nothing new in the package's folder


# ---------------------------------------------------------------- the symptom
def test_a_child_in_another_folder_imports_the_fastmoments_under_test(tmp_path):
    """Without the test session's help (no PYTHONPATH): what a user's ``python`` imports
    from any folder. A leftover ``site-packages/fastmoments/`` without ``__init__.py``
    would be imported as an empty namespace package here."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and os.path.realpath(p) != os.path.realpath(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = "import fastmoments; print(getattr(fastmoments, '__file__', None) or fastmoments)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    imported = done.stdout.strip()
    if done.returncode != 0 or not same_file(imported, FASTMOMENTS_FILE):
        skip_or_fail(f"this environment's fastmoments is {imported or done.stderr!r}, not the "
                     f"one under test {FASTMOMENTS_FILE!r} (install it: pip install -e .)")


# ----------------------------------------------------------------- the extra
def test_the_test_extra_is_installed():
    """In strict mode (CI), every package of the test extra imports."""
    if not is_strict():
        pytest.skip("checked in strict mode (FASTMOMENTS_STRICT=1 or CI)")
    for name in sorted(TEST_EXTRA_MODULES):
        importlib.import_module(name)
    torch = importlib.import_module("torch")
    assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__


def test_readme_commands_are_what_ci_runs():
    """.ci/run runs what .ci/readme_commands.py prints: the README's first code block,
    the install-and-try command, then the test command."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, ".ci", "readme_commands.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['pip install . && fastmoments demo',
                                        'pip install -e ".[test]" && python -m pytest -q']
    with open(os.path.join(os.path.dirname(script), "run"), encoding="utf-8") as handle:
        assert "readme_commands.py" in handle.read()
