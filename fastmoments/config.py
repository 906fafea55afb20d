"""Runtime tunables, read at call time (never frozen into a jitted function)."""

from __future__ import annotations

import os
import sys

__all__ = ["config"]


def _user_cache_folder() -> str:
    """The platform's folder for a user's caches (as numba's and pip's)."""
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        return os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return xdg if os.path.isabs(xdg) else os.path.join(home, ".cache")


def _default_cache_dir() -> str:
    """``FASTMOMENTS_CACHE_DIR``, else ``NUMBA_CACHE_DIR``, else the user's cache folder."""
    for name in ("FASTMOMENTS_CACHE_DIR", "NUMBA_CACHE_DIR"):
        if os.environ.get(name):
            return os.path.abspath(os.path.expanduser(os.environ[name]))
    from . import __version__

    return os.path.join(_user_cache_folder(), "fastmoments", __version__)


_DEFAULT = object()


class _Config:
    """Tunables read at call time (never frozen into a jitted function).

    Attributes
    ----------
    parallel_threshold : int
        A flat buffer (or a group of arrays) with at least this many elements is
        processed by the multi-threaded loop; smaller ones by the serial loop.
        Default 32768: about where two threads start to pay for float32 rules on the
        development machine; measure yours with ``fastmoments bench --crossover``
        (docs/performance.md).
    background_compile : bool
        Default True. The first time a process needs a parallel CPU loop that is not
        compiled yet (numba's parallel compilation takes much longer than the serial
        loop's), the step runs the serial loop, which gives the same results, and the
        parallel loop compiles (or loads from numba's on-disk cache) in a background
        thread; later steps use it once it is ready (:func:`fastmoments.wait_compiled`
        waits for it). LAMB's second pass and trust ratios and SWATS's sum of its dot
        products compile the same way on a cold start, with NumPy versions giving the
        same results meanwhile. False: the step compiles what it needs itself.
    cuda_threads_per_block : int
        Threads per block of the CUDA kernels.
    cuda_max_blocks : int or None
        Upper bound on the grid size (the kernels are grid-stride loops); ``None``
        means enough blocks to cover the buffer once.
    cache_dir : str or None
        The folder of numba's on-disk cache of fastmoments' compiled CPU loops, so that
        a new process loads them in a fraction of a second instead of compiling them.
        Default: the environment variable ``FASTMOMENTS_CACHE_DIR`` if set, else
        ``NUMBA_CACHE_DIR`` if set, else the user's cache folder:
        ``~/.cache/fastmoments/<version>`` on Linux (``$XDG_CACHE_HOME`` if set),
        ``~/Library/Caches/fastmoments/<version>`` on macOS,
        ``%LOCALAPPDATA%\\fastmoments\\<version>`` on Windows. Created when first
        written to; deleting it is safe (the loops compile again, once). Never the
        installed package's folder (numba's default for ``cache=True``: its files would
        outlive an uninstall), and numba's cache for your own functions is left where
        numba puts it. Read when a loop is first loaded or compiled in a process; set
        it (a path, or ``None`` for no on-disk cache) before the first step to take
        effect for every loop. Setting it to its default again: ``del config.cache_dir``.
    """

    __slots__ = ("parallel_threshold", "background_compile", "cuda_threads_per_block",
                 "cuda_max_blocks", "_cache_dir")
    _NAMES = ("parallel_threshold", "background_compile", "cuda_threads_per_block",
              "cuda_max_blocks", "cache_dir")

    def __init__(self) -> None:
        self.parallel_threshold = 1 << 15
        self.background_compile = True
        self.cuda_threads_per_block = 256
        self.cuda_max_blocks: int | None = None
        self._cache_dir: object = _DEFAULT

    @property
    def cache_dir(self) -> str | None:
        """The folder of the on-disk cache of compiled loops (None: none); see above."""
        if self._cache_dir is _DEFAULT:
            self._cache_dir = _default_cache_dir()
        return self._cache_dir  # type: ignore[return-value]

    @cache_dir.setter
    def cache_dir(self, folder: str | os.PathLike[str] | None) -> None:
        if folder is not None:
            folder = os.fspath(folder)
            if not isinstance(folder, str) or not folder:
                raise ValueError(f"config.cache_dir: expected a folder or None, got {folder!r}")
            folder = os.path.abspath(os.path.expanduser(folder))
        self._cache_dir = folder

    @cache_dir.deleter
    def cache_dir(self) -> None:
        self._cache_dir = _DEFAULT

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._NAMES)
        return f"config({items})"


config = _Config()
