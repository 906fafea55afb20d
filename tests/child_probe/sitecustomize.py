"""Put on a child process's PYTHONPATH by tests/children.py: at exit, the child writes the
``__file__`` of the fastmoments it imported into the file named by
``FASTMOMENTS_CHILD_REPORT``, so that a test can check that the child (``python -m
fastmoments``, the console script, an example run as a script) ran the fastmoments
under test. Any other ``sitecustomize`` on the path runs as well."""

import atexit
import importlib.machinery
import importlib.util
import os
import sys

_REPORT = os.environ.pop("FASTMOMENTS_CHILD_REPORT", "")  # not for grandchildren


def _write_report() -> None:
    module = sys.modules.get("fastmoments")
    text = "" if module is None else (getattr(module, "__file__", None) or repr(module))
    with open(_REPORT, "w", encoding="utf-8") as handle:
        handle.write(text)


if _REPORT:
    atexit.register(_write_report)

_HERE = os.path.dirname(os.path.abspath(__file__))
_SPEC = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE])
if _SPEC is not None and _SPEC.loader is not None:
    _OTHER = importlib.util.module_from_spec(_SPEC)
    _SPEC.loader.exec_module(_OTHER)
