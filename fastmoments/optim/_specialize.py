"""A class's ``_scalars`` as step() runs it: the same source, without its calls.

A class writes its per-step scalars by name, ``return named(beta2=beta2, ...)``, and
computes the shared terms with the helpers of :mod:`._scalars` (decay terms, bias
corrections), so that the contract with the rule function is checked by name and each
formula is written once. On a 10-element step, though, the keyword call of ``named``
and the helpers' frames cost more than the rest of the scalars (about 2,000 of the
step's 15,000 instructions). :func:`specialize` compiles, once per class and kernel,
a copy of ``_scalars`` in which

- each ``named(k1=v1, ..., kn=vn)`` whose keywords are exactly the kernel's scalar
  names, in its order, becomes the tuple ``(v1, ..., vn)``; any other ``named`` call is
  left as it is (and raises as it did);
- each call of a helper marked :func:`inline` (its body one ``return`` expression),
  whose arguments are plain loads (names, constants, ``a.b``, ``a["key"]``), becomes that
  expression with its parameters replaced by the arguments.

The copy keeps the file name and line numbers of the source (tracebacks point at it),
and the original is used where no copy can be made (no source, a closure such as
``super()``). tests/test_architecture.py compares copy and original for every class
and kernel variant.
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

__all__ = ["inline", "specialize"]

_INLINE = "__fastmoments_inline__"


def inline(fn: Callable) -> Callable:
    """Mark a helper of ``_scalars`` whose body (after its docstring) is one ``return``
    of an expression of its parameters: :func:`specialize` may write that expression in
    place of a call. Checked here: anything else raises TypeError at import. Without its source (an
    install of bytecode only) the helper stays unmarked, and calls to it stay calls."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return fn
    tree = ast.parse(textwrap.dedent(source)).body[0]
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    params = [a.arg for a in tree.args.args]
    if (len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None
            or tree.args.vararg or tree.args.kwarg or tree.args.kwonlyargs
            or tree.args.defaults):
        raise TypeError(f"inline: {fn.__name__} must be 'return <expression>' of its "
                        "positional parameters")
    free = {n.id for n in ast.walk(body[0].value) if isinstance(n, ast.Name)} - set(params)
    if free - {"min", "max", "abs"}:
        raise TypeError(f"inline: {fn.__name__} uses {sorted(free)}: only its parameters")
    setattr(fn, _INLINE, (params, body[0].value))
    return fn


def _pure(node: ast.expr) -> bool:
    """A load that can be evaluated twice with the same result and no effect."""
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name)
    if isinstance(node, ast.Subscript):
        return isinstance(node.value, ast.Name) and isinstance(node.slice, ast.Constant)
    return False


class _Rewrite(ast.NodeTransformer):
    def __init__(self, names: tuple[str, ...], namespace: dict[str, Any]):
        self.names = names
        self.namespace = namespace
        self.changed = False

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.func, ast.Name):
            return node
        if node.func.id == "named":
            keys = tuple(k.arg for k in node.keywords)
            if node.args or None in keys or keys != self.names:
                return node
            self.changed = True
            return ast.copy_location(
                ast.Tuple([k.value for k in node.keywords], ast.Load()), node)
        helper = self.namespace.get(node.func.id)
        spec = getattr(helper, _INLINE, None)
        if spec is None or node.keywords or not all(_pure(a) for a in node.args):
            return node
        params, expression = spec
        if len(node.args) != len(params):
            return node
        values = dict(zip(params, node.args))

        class _Substitute(ast.NodeTransformer):
            def visit_Name(self, name: ast.Name) -> ast.AST:
                return copy.deepcopy(values[name.id]) if name.id in values else name

        self.changed = True
        body = _Substitute().visit(copy.deepcopy(expression))
        for part in ast.walk(body):  # the helper's own line numbers mean nothing here
            if "lineno" in part._attributes:
                ast.copy_location(part, node)
        return body


_CACHE: dict[tuple[Callable, tuple[str, ...]], Callable] = {}


def specialize(fn: Callable, names: tuple[str, ...]) -> Callable:
    """``fn`` (a ``_scalars`` function) compiled for a kernel whose scalar names are
    ``names`` (see the module docstring), or ``fn`` itself when nothing applies. Cached."""
    key = (fn, names)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = _compile(fn, names)
    return found


def _compile(fn: Callable, names: tuple[str, ...]) -> Callable:
    code = getattr(fn, "__code__", None)
    if code is None or code.co_freevars:
        return fn
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or "<unknown>"
    except (OSError, TypeError):
        return fn
    module = ast.parse(textwrap.dedent("".join(lines)))
    definition = module.body[0]
    if not isinstance(definition, ast.FunctionDef) or definition.decorator_list:
        return fn
    rewrite = _Rewrite(names, fn.__globals__)
    rewrite.visit(definition)
    if not rewrite.changed:
        return fn
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, first - 1)
    namespace: dict[str, Any] = {}
    exec(compile(module, filename, "exec"), fn.__globals__, namespace)
    compiled = namespace[definition.name]
    compiled.__defaults__, compiled.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    compiled.__qualname__ = fn.__qualname__
    compiled.__doc__ = fn.__doc__
    return compiled
