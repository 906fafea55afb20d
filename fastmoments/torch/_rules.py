"""One ``torch.optim.Optimizer`` class per fastmoments rule, generated from a table.

The table is :data:`fastmoments.__all__`: every name there that is a fastmoments
optimizer class gets a class of the same name here, so a rule added to fastmoments
appears in :mod:`fastmoments.torch` without code of its own. A rule that torch.optim
also has (:data:`TORCH_RULES`, the rules :mod:`fastmoments.interop` converts) takes
the constructor signature of torch's class -- its positional order, its defaults, its
torch-only options (``foreach``, ``fused``, ...) -- plus the fastmoments-only
hyperparameters (keyword-only); the others take the fastmoments class's signature.
Every class adds the reduced-precision options (``state_dtype``, ``state_rounding``,
``master_weights``, ``seed``) and ``flat=False``. A rule's own public methods without
arguments and its properties (Schedule-Free's ``eval()``, ``train()``, ``train_mode``)
are forwarded to the inner optimizers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..interop import _NO_STEP, _TORCH_CLASSES
from ..optim.base import Optimizer as _Rule
from ._optimizer import Optimizer

__all__ = ["TORCH_RULES", "make_rule_classes"]

#: rules with a torch.optim class of the same name and semantics
TORCH_RULES: tuple[str, ...] = _TORCH_CLASSES
#: torch keeps the state of these before the first step
_EAGER = ("Adagrad",)

_P = inspect.Parameter
_PARAMS = _P("params", _P.POSITIONAL_OR_KEYWORD,
             annotation="Iterable[torch.Tensor] | Iterable[dict[str, Any]] | "
                        "Iterable[tuple[str, torch.Tensor]]")
_FLAT = _P("flat", _P.KEYWORD_ONLY, default=False, annotation="bool")
#: the reduced-precision options (see fastmoments.torch.Optimizer), keyword-only
_PRECISION = (
    _P("state_dtype", _P.KEYWORD_ONLY, default=None, annotation="str | torch.dtype | None"),
    _P("state_rounding", _P.KEYWORD_ONLY, default="auto", annotation="str | dict[str, str]"),
    _P("master_weights", _P.KEYWORD_ONLY, default=None, annotation="bool | None"),
    _P("seed", _P.KEYWORD_ONLY, default=0, annotation="int"),
)
_PRECISION_NAMES = tuple(p.name for p in _PRECISION)

_DOC = """{name} as a ``torch.optim.Optimizer``: {torch_line}, fastmoments' fused step.

The rule is :class:`fastmoments.{name}` (its page has the math and conventions).
{same_line}

Parameters
----------
params
    ``model.parameters()``, ``(name, parameter)`` pairs, or param-group dicts, as in
    torch.optim: dense and contiguous; float32 or float64 on the CPU or a CUDA
    device, float16 or bfloat16 on the CPU.
{parameters}
state_dtype : default None
    None (the parameters' dtype; float32 for 16-bit parameters), ``"float32"``,
    ``"float64"``, ``"bfloat16"`` (or the torch dtype), or ``"int8"`` (blockwise
    8-bit, CPU tensors): how the state is stored.
state_rounding : default "auto"
    Which bfloat16 states are rounded stochastically: ``"auto"``, ``"nearest"``,
    ``"stochastic"`` or a dict by state name.
master_weights : default None
    For float16 / bfloat16 parameters: keep a float32 master copy (None or True), or
    round the parameters stochastically (False). Ignored for the others.
seed : int, default 0
    Seed of the random bits of stochastic rounding.
flat : bool, default False
    Flatten each param group's parameters and gradients into one buffer per dtype
    and device (see :func:`fastmoments.torch.flatten_`): each group is then stepped
    by one kernel call over one buffer.

Notes
-----
Parameters without a gradient are skipped, as torch does (their state and step
count stay); ``state_dict()`` is in torch's format. See
:class:`fastmoments.torch.Optimizer` and the page "From torch in two lines".{options_note}

Examples
--------
>>> import torch, fastmoments.torch as fmt
>>> model = torch.nn.Linear(4, 1)
>>> opt = fmt.{name}(model.parameters())
>>> model(torch.ones(2, 4)).sum().backward(); opt.step(); opt.zero_grad()
"""

_OPTIONS_NOTE = """

``foreach`` and ``fused`` are accepted and change nothing (every step is one fused
pass); ``capturable=True`` and ``differentiable=True`` are refused."""


def _parameter_doc(p: inspect.Parameter, name: str) -> str:
    default = "" if p.default is _P.empty else f", default {p.default!r}"
    head = f"{p.name} :{default.lstrip(',')}" if default else p.name
    return f"{head}\n    See :class:`fastmoments.{name}`."


def _combined(values: list[Any]) -> Any:
    """One value for the cohorts' values: the common one, or a tuple when they differ."""
    if values and all(v == values[0] for v in values[1:]):
        return values[0]
    return tuple(values)


def _forwarded(rule: type[_Rule]) -> dict[str, Any]:
    """The rule's own public methods without arguments and its properties (Schedule-Free's
    ``eval()`` / ``train()`` / ``train_mode``, SWATS's ``switched``), forwarded to every
    inner optimizer (a property gives their common value)."""
    taken = set(dir(_Rule)) | set(dir(Optimizer))
    out: dict[str, Any] = {}
    for attribute in dir(rule):
        if attribute.startswith("_") or attribute in taken:
            continue
        found = inspect.getattr_static(rule, attribute)
        if isinstance(found, property):
            def getter(self: Optimizer, attribute: str = attribute) -> Any:
                return _combined([getattr(c.inner, attribute) for c in self._cohorts])

            getter.__doc__ = found.__doc__
            out[attribute] = property(getter)
        elif inspect.isfunction(found) and len(inspect.signature(found).parameters) == 1:
            def method(self: Optimizer, attribute: str = attribute) -> None:
                for cohort in self._cohorts:
                    getattr(cohort.inner, attribute)()

            method.__name__ = method.__qualname__ = attribute
            method.__doc__ = found.__doc__
            out[attribute] = method
    return out


def _make(name: str, rule: type[_Rule]) -> type[Optimizer]:
    rule_parameters = [
        p for p in inspect.signature(rule.__init__).parameters.values()
        if p.name not in ("self", "params") and p.kind is not _P.VAR_KEYWORD
    ]
    rule_keys = tuple(p.name for p in rule_parameters)
    torch_rule = getattr(torch.optim, name, None) if name in TORCH_RULES else None
    self_parameter = _P("self", _P.POSITIONAL_OR_KEYWORD)
    if torch_rule is not None:
        torch_parameters = list(inspect.signature(torch_rule.__init__).parameters.values())[2:]
        torch_names = tuple(p.name for p in torch_parameters)
        extra = [p.replace(kind=_P.KEYWORD_ONLY) for p in rule_parameters
                 if p.name not in torch_names]
        parameters = [self_parameter, _PARAMS, *torch_parameters, *extra, *_PRECISION, _FLAT]
        torch_keys = tuple(n for n in torch_names if n not in rule_keys)
        documented = [p for p in torch_parameters if p.name in rule_keys] + extra
    else:
        torch_names = ()
        parameters = [self_parameter, _PARAMS, *rule_parameters, *_PRECISION, _FLAT]
        torch_keys = ()
        documented = rule_parameters
    signature = inspect.Signature(parameters, return_annotation=None)

    def __init__(self: Optimizer, params: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"], values["params"]
        flat = values.pop("flat")
        precision = {name: values.pop(name) for name in _PRECISION_NAMES}
        Optimizer.__init__(self, params, values, flat=flat, **precision)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    doc = _DOC.format(
        name=name,
        torch_line=(f"``torch.optim.{name}``'s constructor" if torch_rule is not None
                    else f"``fastmoments.{name}``'s constructor"),
        same_line=(f"The same keywords give ``torch.optim.{name}``'s trajectory."
                   if torch_rule is not None else "torch.optim has no such rule."),
        parameters="\n".join(_parameter_doc(p, name) for p in documented),
        options_note=_OPTIONS_NOTE if torch_keys else "",
    )
    namespace = {
        "__module__": "fastmoments.torch",
        "__qualname__": name,
        "__doc__": doc,
        "__init__": __init__,
        "_rule": rule,
        "_torch_rule": torch_rule,
        "_rule_keys": rule_keys,
        "_torch_keys": torch_keys,
        "_torch_params": torch_names,
        "_has_step": name not in _NO_STEP,
        "_eager": name in _EAGER,
        "_decoupled": ({"Adam": False, "AdamW": True}.get(name)
                       if "decoupled_weight_decay" in torch_keys else None),
        "_tensor_host": frozenset({"mu_product"}) if torch_rule is not None else frozenset(),
        **_forwarded(rule),
    }
    return type(name, (Optimizer,), namespace)


def make_rule_classes() -> dict[str, type[Optimizer]]:
    """A class for every optimizer class in :data:`fastmoments.__all__`, by name."""
    import fastmoments

    classes = {}
    for name in fastmoments.__all__:
        rule = getattr(fastmoments, name, None)
        if isinstance(rule, type) and issubclass(rule, _Rule):
            classes[name] = _make(name, rule)
    return classes
