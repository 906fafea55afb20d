"""The house rules a change must keep: the rule contract by name, no import cycle, the
short path's fields declared once."""

from __future__ import annotations

import ast
import dis
import inspect
import math
import pathlib
import textwrap

import numpy as np
import pytest

import fastmoments as fm
from fastmoments.kernels.elementwise import Kernel, named_scalars
from fastmoments.optim._specialize import inline, specialize
from fastmoments.optim.base import Optimizer, ShortPath

PACKAGE = pathlib.Path(fm.__file__).parent

# every kernel variant a class can select: the test table's cases plus the variants it
# does not reach (the multi-pass and element-wise rules outside the torch table)
VARIANTS: list[tuple[str, dict]] = [
    ("SGD", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adagrad", {}),
    ("RMSprop", {}), ("RMSprop", {"centered": True}), ("RMSprop", {"momentum": 0.9}),
    ("RMSprop", {"centered": True, "momentum": 0.9}),
    ("Adadelta", {}),
    ("Adam", {}), ("Adam", {"amsgrad": True}), ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"cautious": True}), ("AdamW", {}), ("AdamW", {"amsgrad": True}),
    ("AdamW", {"amsgrad": True, "cautious": True}),
    ("Adamax", {}), ("NAdam", {}), ("NAdam", {"decoupled_weight_decay": True}),
    ("RAdam", {}), ("RAdam", {"decoupled_weight_decay": True}),
    ("Yogi", {}), ("AdaBelief", {}), ("AdaBelief", {"amsgrad": True}),
    ("Lion", {}), ("Lion", {"cautious": True}), ("LAMB", {}), ("NDAdam", {}), ("SWATS", {}),
    ("ADOPT", {}), ("ADOPT", {"cautious": True}), ("AdEMAMix", {}),
    ("AdEMAMix", {"cautious": True}), ("ScheduleFreeAdamW", {}), ("ScheduleFreeSGD", {}),
    ("Adan", {}), ("Adan", {"cautious": True}),
]


def _optimizer_classes() -> list[str]:
    return [n for n in fm.__all__
            if isinstance(getattr(fm, n), type) and issubclass(getattr(fm, n), Optimizer)]


def test_every_class_has_its_variants_listed():
    listed = {name for name, _ in VARIANTS}
    assert set(_optimizer_classes()) <= listed, set(_optimizer_classes()) - listed


@pytest.mark.parametrize("name, kwargs", VARIANTS,
                         ids=[f"{n}-{k}" for n, k in VARIANTS])
def test_scalars_are_given_by_the_rule_signature_names(name, kwargs):
    """Each class hands its rule the per-step scalars by name, and those names are the
    parameters of the rule function its selected kernel calls, after ``param, grad``,
    the states, ``grad_mult`` and ``clip_value``."""
    opt = getattr(fm, name)([np.ones((3, 2)), np.ones(3)], **kwargs)
    for group in opt._groups:
        kernel = group.kernel
        if isinstance(kernel, Kernel):
            signature = list(inspect.signature(kernel.rule.py_func).parameters)
            expected = tuple(signature[2 + len(kernel.state_names) + 2:])
            assert kernel.scalar_names[2:] == expected
        else:  # a multi-pass rule: the names its _run unpacks, declared once
            expected = kernel.scalar_names[2:]
        given: list[dict] = []

        def recording(given=given, kernel=kernel, **values):
            given.append(values)
            return kernel.named(**values)

        for step in (1, 2):
            opt._scalars(group.values, 1e-3, step, dict(group.host_state), recording)
        assert [tuple(v) for v in given] == [expected, expected]  # keyword order = rule order
        assert inspect.signature(kernel.named).parameters.keys() == set(expected)


def test_a_misnamed_scalar_raises_instead_of_shifting():
    named = named_scalars("adam", ("beta2", "one_minus_beta2"))
    assert named(one_minus_beta2=0.001, beta2=0.999) == (0.999, 0.001)
    with pytest.raises(TypeError):
        named(beta2=0.999, one_minus_beta=0.001)
    with pytest.raises(TypeError):
        named(0.999, 0.001)  # positional values are refused: names only


def test_the_short_path_is_built_with_its_declared_fields():
    flat = fm.FlatParams([np.ones(10, dtype=np.float32)])
    flat.grad[:] = 0.5
    opt = fm.Adam(flat, lr=1e-3)
    opt.step()
    short = opt._short_path
    assert type(short) is tuple  # a plain tuple: CPython's fast unpacking applies
    fields = ShortPath(*short)
    assert fields.group is opt._groups[0] and fields.flat
    assert fields.named is fields.group.kernel.named
    opt.max_grad_norm = 1.0  # an option change forgets every plan
    assert opt._short_path is None and opt._packed_scalars is None


def test_step_unpacks_the_short_path_in_its_declared_order():
    """``step()`` unpacks the short path positionally: its targets are ShortPath's fields."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Optimizer.step)))
    unpacks = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Name) and node.value.id == "short"
               and isinstance(node.targets[0], ast.Tuple)]
    assert len(unpacks) == 1
    names = tuple(t.id for t in unpacks[0].targets[0].elts)
    assert names == ShortPath._fields


def test_short_path_with_a_scalar_beyond_float32():
    """A step scalar beyond float32's range (lr=1e39) packs as inf on the short path as
    on the full one, instead of failing."""
    runs = []
    for forget in (False, True):
        flat = fm.FlatParams([np.linspace(-1, 1, 8, dtype=np.float32)])
        flat.grad[:] = 0.5
        opt = fm.SGD(flat, lr=1e39)
        for _ in range(3):
            if forget:
                opt._forget_plans()  # the full path every step
            else:  # steps 2 and 3 take the short path
                assert (opt._short_path is None) == (opt.step_count == 0)
            with np.errstate(all="ignore"):
                opt.step()
        runs.append(flat.data.tobytes())
    assert runs[0] == runs[1]


# ------------------------------------------------ rule names vs the templates
def _package_kernels() -> list:
    """Every Kernel and SegmentedKernel the optimizer modules build at import."""
    from fastmoments.kernels.segmented import SegmentedKernel
    from fastmoments.optim import (
        _cautious,
        adam,
        adam_variants,
        adaptive,
        lamb,
        modern,
        multipass,
        ndadam,
        schedulefree,
        sgd,
        swats,
    )

    found = []
    for module in (sgd, adaptive, adam, adam_variants, modern, schedulefree, multipass, lamb,
                   ndadam, swats):
        for value in vars(module).values():
            for item in value.values() if isinstance(value, dict) else (value,):
                if isinstance(item, _cautious.Cautious):
                    found += [item.count, item.apply]
                elif isinstance(item, (Kernel, SegmentedKernel)):
                    found.append(item)
    return found


def test_no_rule_argument_is_named_like_a_template_name():
    kernels = _package_kernels()
    assert len(kernels) > 40
    for kernel in kernels:
        kernel._check_names()


def _segmented_rule(param, grad, exp_avg, grad_mult, clip_value, lr, stride):
    return param - lr * grad * stride, exp_avg, grad


def _elementwise_rule(param, grad, m, grad_mult, clip_value, m_j, key):
    return param - m_j * grad * key, m


@pytest.mark.parametrize("which", ["segmented", "elementwise"])
def test_a_rule_argument_named_like_a_template_name_is_refused(which):
    """A scalar named ``stride`` would be the segmented loop's stride, ``m_j`` the list
    path's slice of the state ``m``, ``key`` the reduced-precision loops' random key:
    the kernel refuses to build such a rule (before compiling anything)."""
    from fastmoments.kernels.compile import rule
    from fastmoments.kernels.segmented import SegmentedKernel

    if which == "segmented":
        kernel = SegmentedKernel(rule(_segmented_rule), ("exp_avg",), (), 1, ())
        match = r"'stride' \(a name of the generated loops\)"
    else:
        kernel = Kernel(rule(_elementwise_rule), ("m",))
        match = r"'m_j' \(the loops' name made from 'm'\), 'key'"
    with pytest.raises(TypeError, match=match):
        _ = kernel.serial
    with pytest.raises(TypeError, match="rename them"):
        _ = kernel.cuda


# ------------------------------------------------------------- import graph
def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: pathlib.Path, name: str) -> bool:
    base = root.parent / pathlib.Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(root: pathlib.Path, path: pathlib.Path, module: str) -> set[str]:
    """Every module of the package that ``module`` imports, at any depth of its code
    (imports inside functions included; ``if TYPE_CHECKING:`` blocks excluded)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = root.name
    out = set()
    tree = ast.parse(path.read_text())
    # imports for type checkers only never run
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            names = [f"{source}.{a.name}" if _is_module(root, f"{source}.{a.name}") else source
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == top and _is_module(root, n)}
    out.discard(module)
    out.discard(top)  # the package's __init__ only re-exports what its modules define
    return out


def _find_cycle(root: pathlib.Path) -> list[str] | None:
    graph = {}
    for path in root.rglob("*.py"):
        name = _module_name(root, path)
        graph[name] = _imports(root, path, name)
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        done.add(node)
        return None

    for name in sorted(graph):
        found = visit(name, [name])
        if found:
            return found
    return None


def test_no_import_cycle():
    cycle = _find_cycle(PACKAGE)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_cycle_check_finds_a_cycle_made_inside_functions(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\n")
    assert _find_cycle(package) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_a_misnamed_scalar_in_a_class_raises_on_the_first_step():
    class Broken(fm.SGD):
        def _scalars(self, hyper, lr, step, host, named):
            return named(weight_decay=hyper["weight_decay"], learning_rate=lr)

    opt = Broken([np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match="learning_rate"):
        opt.step([np.ones(3)])


@pytest.mark.parametrize("name, kwargs", VARIANTS,
                         ids=[f"{n}-{k}" for n, k in VARIANTS])
def test_the_specialized_scalars_equal_the_written_ones(name, kwargs):
    """step()'s short path runs ``_scalars`` compiled without its calls (optim._specialize):
    for every class and kernel variant it returns exactly what the source returns."""
    opt = getattr(fm, name)([np.ones((3, 2)), np.ones(3)], **kwargs)
    for group in opt._groups:
        named = group.kernel.named
        written = type(opt)._scalars
        compiled = specialize(written, named.names)
        for step, lr in [(1, 1e-3), (2, 1e-3), (3, 0.5), (10, 0.0), (1000, 2e-2)]:
            host = dict(group.host_state)
            expected = written(opt, group.values, lr, step, dict(host), named)
            got = compiled(opt, group.values, lr, step, dict(host), named)
            assert type(got) is tuple and got == expected, (step, lr)
            assert [math.copysign(1, v) for v in got] == [math.copysign(1, v) for v in expected]


def test_specialize_removes_the_calls_and_keeps_the_lines():
    """Adam's copy has no keyword call and no helper frame, and its code points at the
    class's source lines; a ``named`` call whose keywords are not the kernel's stays a
    call (and raises as before)."""
    written = fm.Adam._scalars
    compiled = specialize(written, fm.Adam([np.ones(3)])._groups[0].kernel.named.names)
    assert compiled is not written
    calls = [i for i in dis.get_instructions(compiled) if i.opname in ("CALL", "KW_NAMES")]
    assert calls == []
    assert compiled.__code__.co_filename == written.__code__.co_filename
    assert compiled.__code__.co_firstlineno == written.__code__.co_firstlineno
    other = specialize(written, ("eps", "beta2"))  # the named call does not match: kept
    assert [i.argval for i in dis.get_instructions(other) if i.opname == "KW_NAMES"]
    with pytest.raises(TypeError):
        other(fm.Adam([np.ones(3)]), fm.Adam([np.ones(3)])._groups[0].values, 1e-3, 1, {},
              named_scalars("adam", ("eps", "beta2")))


def test_inline_refuses_a_helper_with_statements():
    def helper(a, b):
        c = a + b
        return c

    with pytest.raises(TypeError, match="return <expression>"):
        inline(helper)
