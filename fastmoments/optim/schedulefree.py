"""Schedule-Free AdamW and SGD (Defazio et al., 2024), with ``eval()`` / ``train()``.

The parameters hold the gradient point ``y`` in train mode and the average ``x`` in eval
mode; only ``z`` is stored. Each class follows the authors' ``schedulefree`` package
(``docs/rules/schedulefree.md`` says where the paper differs) and takes the options
shared by all optimizers (see :class:`fastmoments.optim.base.Optimizer`).
"""

from __future__ import annotations

from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ._checks import is_number
from ._groups import Group
from .base import Optimizer

__all__ = ["ScheduleFreeAdamW", "ScheduleFreeSGD"]

_SCHEDULE_FREE_ADAMW = Kernel(_rules.schedule_free_adamw, ("z", "exp_avg_sq"))
_SCHEDULE_FREE_SGD = Kernel(_rules.schedule_free_sgd, ("z",))


class _ScheduleFree(Optimizer):
    """The averaging weights, the train/eval switch and the first step's ``z = y``.

    ``host_state`` per group: ``train_mode`` (1.0 / 0.0), ``weight_sum`` and
    ``lr_max`` of the schedulefree package; saved with the state.
    """

    _nonneg = ("weight_decay", "warmup_steps", "r", "weight_lr_power")

    def _interpolation(self, hyper: dict[str, Any]) -> float:
        """:math:`\\beta_1`, the weight of ``x`` in ``y``."""
        raise NotImplementedError

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"train_mode": 1.0, "weight_sum": 0.0, "lr_max": -1.0}

    def _averaging(self, hyper: dict, lr: float, step: int, host: dict) -> tuple:
        """This step's ``(lr_t, c_t, y_coef)``; advances the host sums."""
        warmup = hyper["warmup_steps"]
        lr_t = lr * step / warmup if step < warmup else lr
        lr_max = max(host["lr_max"], lr_t)
        weight = step ** hyper["r"] * lr_max ** hyper["weight_lr_power"]
        weight_sum = host["weight_sum"] + weight
        host["lr_max"], host["weight_sum"] = lr_max, weight_sum
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        y_coef = lr_t * (self._interpolation(hyper) * (1.0 - ckp1) - 1.0)
        return lr_t, ckp1, y_coef

    @property
    def train_mode(self) -> bool:
        """True when the parameters hold ``y`` (train), False when they hold ``x``."""
        return all(g.host_state["train_mode"] for g in self._groups)

    def step(self, grads: Any = None, *, grad_scale: float = 1.0) -> float | None:
        if not self.train_mode:
            raise RuntimeError(f"{type(self).__name__}.step: the optimizer is in eval mode "
                               "(the parameters hold the average x); call train() first")
        return super().step(grads, grad_scale=grad_scale)

    def eval(self) -> None:
        """Write the averaged point ``x`` into the parameters (in place), for evaluation
        and checkpoints; ``train()`` undoes it. Nothing moves before the first step."""
        self._switch(to_train=False)

    def train(self) -> None:
        """Write the gradient point ``y`` back into the parameters (in place)."""
        self._switch(to_train=True)

    def _switch(self, to_train: bool) -> None:
        for group in self._groups:
            host = group.host_state
            if bool(host["train_mode"]) == to_train:
                continue
            if self.step_count > 0:  # before the first step z is not set: x = y = z
                b1 = self._interpolation(group.hyper)
                # x = y + (1 - 1/b1) (z - y);  y = x + (1 - b1) (z - x)
                _lerp_towards(group, group.state["z"], 1.0 - b1 if to_train else 1.0 - 1.0 / b1)
            host["train_mode"] = 1.0 if to_train else 0.0

    def _common_scalars(self, hyper: dict, lr: float, step: int, host: dict) -> dict:
        lr_t, ckp1, y_coef = self._averaging(hyper, lr, step, host)
        return dict(weight_decay=hyper["weight_decay"], first_step=1.0 if step == 1 else 0.0,
                    ckp1=ckp1, y_coef=y_coef, lr=lr_t)


def _lerp_towards(group: Group, z: Any, weight: float) -> None:
    """``p <- p + weight (z - p)`` over the group's parameters, in place."""
    if group.device == "cuda":
        from ..kernels import cuda as _gpu

        kernel = _lerp_cuda_kernel()
        w = group.dtype.type(weight)
        if group.flat is not None:
            _gpu.launch(kernel, group.numel, group.flat.data, z, w)
            return
        for j, p in enumerate(group.params):
            start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
            _gpu.launch(kernel, stop - start, p.reshape(p.size), z[start:stop], w)
        return
    w = group.dtype.type(weight)
    pairs = ([(group.flat.data, z)] if group.flat is not None else
             [(p.reshape(p.size), z[int(group.offsets[j]):int(group.offsets[j + 1])])
              for j, p in enumerate(group.params)])
    for p, zj in pairs:
        p += w * (zj - p)


def _lerp_towards_cuda(p, z, w):  # the body of the kernel _lerp_cuda_kernel builds
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):  # noqa: F821
        p[i] = p[i] + w * (z[i] - p[i])


_LERP_CUDA: list = []


def _lerp_cuda_kernel():
    """A grid-stride ``p[i] += w * (z[i] - p[i])``, compiled on first use (``cuda`` is
    made a global of this module then, where numba's simulator expects it)."""
    if not _LERP_CUDA:
        from ..kernels import cuda as _gpu

        globals()["cuda"] = _gpu.cuda
        _LERP_CUDA.append(_gpu.cuda.jit(_lerp_towards_cuda))
    return _LERP_CUDA[0]


_SCHEDULE_FREE_REFERENCE = """
    Schedule-Free keeps three points: ``z`` (the base iterate), ``x`` (the average of the
    ``z``, weighted by :math:`c_t`) and ``y`` (where the gradient is taken). In train mode
    the parameters hold ``y``; ``eval()`` writes ``x`` into them in place and ``train()``
    writes ``y`` back (call ``eval()`` before evaluating or saving, ``train()`` before the
    next step; ``step()`` refuses to run in eval mode). Only ``z`` is stored: ``x`` is never
    formed during training."""


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al., 2024): no learning-rate schedule.

    .. math::

        \gamma_t &= \gamma \min(1, t / T_w), \qquad
        c_t = \frac{t^r \max_{s \le t}\gamma_s^{\,p}}{\sum_{i \le t} i^r
              \max_{s \le i}\gamma_s^{\,p}} \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda y_{t-1} \\
        z_t &= z_{t-1} - \gamma_t u_t, \qquad x_t = (1 - c_t) x_{t-1} + c_t z_t, \qquad
        y_t = \beta_1 x_t + (1 - \beta_1) z_t

    with :math:`g_t` taken at :math:`y_{t-1}` and :math:`x_0 = y_0 = z_0 = \theta_0`.
    {reference}

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 0.0025
        :math:`\gamma` (constant: that is the point; a schedule is multiplied in).
    betas : (float, float), default (0.9, 0.999)
        :math:`\beta_1` (the interpolation of ``y``, > 0) and :math:`\beta_2`.
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda`, at ``y``, after the normalization.
    warmup_steps : int, default 0
        :math:`T_w`, a linear warm-up of :math:`\gamma`.
    r : float, default 0
        Polynomial weighting :math:`t^r` of the average.
    weight_lr_power : float, default 2
        :math:`p`: the average weighs each step by the largest :math:`\gamma` so far to
        this power.
    maximize : bool, default False

    Notes
    -----
    Follows the authors' ``schedulefree`` package (``AdamWScheduleFree``), which starts in
    eval mode and asks for ``train()`` first; this class starts in train mode (before the
    first step the two are the same point). The paper's Algorithm 1 scales
    :math:`\gamma_t` by :math:`\sqrt{1 - \beta_2^t}` instead of correcting :math:`v`.
    See ``docs/rules/schedulefree.md``.

    References
    ----------
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky (2024), The Road Less Scheduled.
    NeurIPS. arXiv:2405.15682.
    """

    def __init__(self, params: Any, lr: Any = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0,
                 r: float = 0.0, weight_lr_power: float = 2.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize),
                         **options)

    _nonneg = ("eps", *_ScheduleFree._nonneg)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        if not hyper["betas"][0] > 0:
            raise ValueError(f"{type(self).__name__}: invalid betas[0]: expected 0.0 < "
                             f"betas[0] < 1.0 (x is recovered by dividing by it), got "
                             f"{hyper['betas'][0]!r}")

    def _interpolation(self, hyper: dict[str, Any]) -> float:
        return hyper["betas"][0]

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _SCHEDULE_FREE_ADAMW

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta2 = hyper["betas"][1]
        return named(**self._common_scalars(hyper, lr, step, host), beta2=beta2,
                     one_minus_beta2=1.0 - beta2, inv_bias_correction2=1.0 / (1.0 - beta2**step),
                     eps=hyper["eps"])


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al., 2024): no learning-rate schedule.

    .. math::

        u_t &= g_t + \lambda y_{t-1}, \qquad z_t = z_{t-1} - \gamma_t u_t \\
        x_t &= (1 - c_t) x_{t-1} + c_t z_t, \qquad y_t = \mu x_t + (1 - \mu) z_t

    with :math:`\gamma_t` and :math:`c_t` as in :class:`ScheduleFreeAdamW`,
    :math:`g_t` taken at :math:`y_{t-1}`.
    {reference}

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1.0
    momentum : float, default 0.9
        :math:`\mu`, the interpolation of ``y`` (strictly between 0 and 1).
    weight_decay : float, default 0
        :math:`\lambda` (L2, at ``y``).
    warmup_steps : int, default 0
    r : float, default 0
    weight_lr_power : float, default 2
    maximize : bool, default False

    Notes
    -----
    Follows the authors' ``schedulefree`` package (``SGDScheduleFree``). See
    ``docs/rules/schedulefree.md``.

    References
    ----------
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky (2024), The Road Less Scheduled.
    NeurIPS. arXiv:2405.15682.
    """

    def __init__(self, params: Any, lr: Any = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize),
                         **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        momentum = hyper["momentum"]
        if not is_number(momentum) or not 0.0 < momentum < 1.0:
            raise ValueError(f"{type(self).__name__}: invalid momentum: expected 0.0 < "
                             f"momentum < 1.0, got {momentum!r}")

    def _interpolation(self, hyper: dict[str, Any]) -> float:
        return hyper["momentum"]

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _SCHEDULE_FREE_SGD

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        return named(**self._common_scalars(hyper, lr, step, host))


for _cls in (ScheduleFreeAdamW, ScheduleFreeSGD):
    _cls.__doc__ = _cls.__doc__.replace("{reference}", _SCHEDULE_FREE_REFERENCE.strip("\n"))
