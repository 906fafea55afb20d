"""numba's on-disk cache of fastmoments' compiled loops, kept in ``config.cache_dir``.

With ``cache=True`` numba writes a function's compiled code into the ``__pycache__``
folder beside its source file: for an installed package, inside
``site-packages/fastmoments``. Those files belong to no installed distribution, so
``pip uninstall`` (or the reinstall that ``pip install -e .`` does) leaves them, and
the folders that hold them, behind; ``site-packages/fastmoments/`` then stays as a
folder without ``__init__.py``, which Python imports as an empty namespace package
from any working directory (``cannot import name '__version__' from 'fastmoments'
(unknown location)``).

So fastmoments' jitted functions carry their own cache (:class:`Cache`, given by
:func:`cached_njit`), which is numba's ``FunctionCache`` (same files, same index and
invalidation: the stamp is the source file, the key holds the bytecode; the generated
loops' names carry a hash of their sources, see :func:`.compile.source_hash`) with
one difference: its folder is ``config.cache_dir`` (default: ``FASTMOMENTS_CACHE_DIR``,
else ``NUMBA_CACHE_DIR``, else the user's cache folder), read when a function is first
loaded or compiled, not when it is defined. numba's own settings are left alone:
the user's functions with ``cache=True`` are cached where numba always caches them.
(``NUMBA_CACHE_LOCATOR_CLASSES``, numba's setting that names the locators for every
function, overrides this one too.)
"""

from __future__ import annotations

import os
import threading
import warnings

from numba import njit
from numba.core import caching as _caching

from ..config import config

__all__ = ["Cache", "cached_njit", "uses_fastmoments_cache"]


class _FolderLocator(_caching._SourceFileBackedLocatorMixin, _caching._CacheLocator):
    """numba's ``UserProvidedCacheLocator`` (``NUMBA_CACHE_DIR``), for any folder: the
    cache of a function defined in ``.../pkg/mod.py`` goes into
    ``folder/pkg_<hash of .../pkg>/``, so that two installations of fastmoments (say a
    wheel and an editable checkout) keep apart, as numba keeps them apart."""

    folder = ""  # set by each subclass of _cache_class

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(self.folder, self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path


_CLASSES: dict[str, type] = {}
_LOCK = threading.Lock()


def _cache_class(folder: str) -> type:
    """numba's ``FunctionCache`` with its files in ``folder`` (one class per folder)."""
    with _LOCK:
        cls = _CLASSES.get(folder)
        if cls is None:
            locator = type("FolderLocator", (_FolderLocator,), {"folder": folder})
            # a module inside a zip file: numba's own locator for it (user-wide folder)
            impl = type("FolderCacheImpl", (_caching.CompileResultCacheImpl,),
                        {"_locator_classes": [locator, _caching.ZipCacheLocator]})
            cls = _CLASSES[folder] = type("FolderFunctionCache", (_caching.FunctionCache,),
                                          {"_impl_class": impl})
        return cls


_WARNED: set[str] = set()
_UNSET = object()


class Cache(_caching._Cache):
    """The on-disk cache of one jitted function, in ``config.cache_dir``.

    numba's dispatcher calls :meth:`load_overload` before it compiles a signature and
    :meth:`save_overload` after. Each call looks at ``config.cache_dir``: the
    function's cache files are read from and written to the folder named there at
    that moment (``None``: no on-disk cache). A folder that cannot be created or
    written to gives one warning and no on-disk cache (the loops compile in each
    process).
    """

    def __init__(self, py_func):
        self._py_func = py_func
        self._name = repr(py_func)
        self._enabled = True
        self._folder: object = _UNSET  # the folder self._cache was made for
        self._cache = None  # numba's FunctionCache in that folder (None: no disk cache)

    def __repr__(self) -> str:
        return f"<fastmoments Cache py_func={self._name} folder={self._folder!r}>"

    def _current(self):
        folder = config.cache_dir
        if folder != self._folder:
            self._folder, self._cache = folder, None
            if folder is not None:
                try:
                    self._cache = _cache_class(folder)(self._py_func)
                except RuntimeError as error:  # no locator: the folder is not writable
                    if folder not in _WARNED:
                        _WARNED.add(folder)
                        warnings.warn(f"fastmoments: numba's cache cannot be written to "
                                      f"{folder!r} ({error}); the loops compile in each "
                                      f"process (set fastmoments.config.cache_dir or "
                                      f"FASTMOMENTS_CACHE_DIR to a writable folder)",
                                      RuntimeWarning, stacklevel=3)
        return self._cache

    @property
    def cache_path(self):
        """The folder this function's cache files are in now (None: no disk cache)."""
        cache = self._current()
        return None if cache is None else cache.cache_path

    def load_overload(self, sig, target_context):
        if not self._enabled:
            return None
        cache = self._current()
        return None if cache is None else cache.load_overload(sig, target_context)

    def save_overload(self, sig, data):
        if not self._enabled:
            return
        cache = self._current()
        if cache is not None:
            cache.save_overload(sig, data)

    def enable(self):
        self._enabled = True

    def disable(self):
        self._enabled = False

    def flush(self):
        if self._cache is not None:
            self._cache.flush()


def cached_njit(**options):
    """``numba.njit(**options)`` with the on-disk cache in ``config.cache_dir``: what
    fastmoments uses instead of ``njit(cache=True, ...)`` (which would write into the
    installed package's folder)."""
    if "cache" in options:
        raise TypeError("cached_njit caches always: no cache= option")

    def decorate(fn):
        dispatcher = njit(**options)(fn)
        if hasattr(dispatcher, "_cache"):  # not NUMBA_DISABLE_JIT's plain function
            dispatcher._cache = Cache(dispatcher.py_func)  # numba's enable_caching, ours
        return dispatcher

    return decorate


def uses_fastmoments_cache(dispatcher) -> bool:
    """Whether a jitted function caches in ``config.cache_dir`` (for the tests)."""
    return isinstance(getattr(dispatcher, "_cache", None), Cache)

