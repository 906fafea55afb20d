"""int8 state against bitsandbytes' 8-bit Adam on the CPU (issue 22, point 4).

bitsandbytes 0.50.2's CPU ``Adam8bit`` keeps the same stored form as ``state_dtype="int8"``
(blocks of 256, one float32 absmax per block, uint8 codes into the same two dynamic maps),
but its CPU quantizer is not a nearest-entry search: it rounds ``x / absmax`` to a grid of
65,536 points on [-1, 1] and looks the code up in a table built for the grid points.
Entries finer than the grid (|x| below about 3e-5 of the block's absmax) are unreachable:
0 is stored as 2.1e-5 (signed map) or 1.6e-5 (unsigned map) of the absmax. fastmoments
rounds to the nearest entry. The two agree wherever the grid is finer than the map.

The trajectory tolerance is their own disagreement: over the same gradients, how far
bitsandbytes' steps are from float32 ``torch.optim.Adam`` is the distance fastmoments'
int8 steps may have from it.
"""

from __future__ import annotations

import numpy as np
import pytest
from recorded_gradients import demo_gradients, lognormal_gradients

import fastmoments as fm
from fastmoments.kernels import quantized

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

LR = 1e-3


def _adam8bit(params, **kwargs):
    # min_8bit_size: bitsandbytes' default, stated: the tensors of 4096 elements or more
    # are quantized, as fastmoments' threshold (quantized.THRESHOLD)
    return bnb.optim.Adam8bit(params, lr=LR, min_8bit_size=quantized.THRESHOLD, **kwargs)


def test_bnb_cpu_state_is_8_bit_blockwise_with_our_maps():
    p = torch.nn.Parameter(torch.zeros(5000))  # a partial last block
    opt = _adam8bit([p])
    p.grad = torch.linspace(-1.0, 1.0, 5000)
    opt.step()
    state = opt.state[p]
    for k, signed in ((1, True), (2, False)):
        assert state[f"state{k}"].dtype == torch.uint8
        assert state[f"state{k}"].numel() == 5000
        assert state[f"absmax{k}"].dtype == torch.float32
        assert state[f"absmax{k}"].numel() == -(-5000 // quantized.BLOCK)
        # the same map, to the last bit of float32 (bitsandbytes builds it in float64
        # and then rounds differently by at most one unit)
        np.testing.assert_allclose(state[f"qmap{k}"].numpy(), quantized.dynamic_map(signed),
                                   rtol=0, atol=6e-8)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bnb_cpu_quantizer_is_a_65536_point_grid_and_agrees_with_ours_above_it(signed):
    rng = np.random.default_rng(0)
    n = 256 * 64
    x = rng.standard_normal(n) * np.exp(rng.normal(0.0, 2.5, n))  # down to ~1e-9 of the absmax
    x = (x if signed else np.abs(x)).astype(np.float32)
    qmap = quantized.dynamic_map(signed)
    codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(
        torch.from_numpy(x), torch.from_numpy(qmap.copy()), quantized.BLOCK)
    codes = codes.numpy()
    blocks, small, _, n_small = quantized.block_table(np.array([0, n]))
    ours, our_absmax, _ = quantized.quantize(x, blocks, small, n_small, signed)
    np.testing.assert_array_equal(absmax.numpy(), our_absmax)
    scaled = x * np.repeat(np.float32(1) / our_absmax, quantized.BLOCK)  # as bitsandbytes
    # what was observed (bitsandbytes 0.50.2): the code of the grid point nearest to x
    grid = (np.arange(65536) / 65535 * 2 - 1).astype(np.float32)
    table = quantized._nearest_codes_host(qmap, grid)
    slot = ((scaled + np.float32(1)) * np.float32(0.5 * 65535) + np.float32(0.5)).astype(int)
    np.testing.assert_array_equal(codes, table[slot])
    assert qmap[codes[np.argmin(np.abs(scaled))]] > 1e-5  # 0 is out of its reach
    # where the grid is much finer than the map (its spacing is 3e-5, the map's above
    # 1e-2 at least 5.6e-3), the codes agree but near the midpoints between entries
    coarse = np.abs(scaled) >= 1e-2
    assert min(coarse.sum(), (~coarse).sum()) > 500
    assert np.mean(codes[coarse] == ours[coarse]) > 0.99
    assert np.mean(codes[~coarse] == ours[~coarse]) < 0.9  # and below it they do not


def _distances(start, grads):
    """Per implementation (bitsandbytes, fastmoments int8): the distance of its steps and
    of its final parameters from float32 torch.optim.Adam's, over the quantized tensors,
    in units of the step size lr (steps) and lr * steps (final parameters)."""
    ref = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in start]
    theirs = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in start]
    ours = [p.copy() for p in start]
    ref_opt = torch.optim.Adam(ref, lr=LR, foreach=False)
    their_opt = _adam8bit(theirs)
    our_opt = fm.Adam(ours, lr=LR, state_dtype="int8")
    big = [i for i, p in enumerate(start) if p.size >= quantized.THRESHOLD]

    def flat(params):
        return np.concatenate([np.asarray(params[i].detach() if hasattr(params[i], "detach")
                                          else params[i], dtype=np.float64).ravel()
                               for i in big])

    step_err = {"bnb": [], "ours": []}
    for g in grads:
        before = [flat(ref), flat(theirs), flat(ours)]
        for params in (ref, theirs):
            for p, gi in zip(params, g, strict=True):
                p.grad = torch.from_numpy(gi.copy())
        ref_opt.step()
        their_opt.step()
        our_opt.step([gi.copy() for gi in g])
        ref_step = flat(ref) - before[0]
        step_err["bnb"].append(np.abs(flat(theirs) - before[1] - ref_step) / LR)
        step_err["ours"].append(np.abs(flat(ours) - before[2] - ref_step) / LR)
    state = their_opt.state[theirs[big[0]]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    span = LR * len(grads)
    final = {"bnb": np.abs(flat(theirs) - flat(ref)) / span,
             "ours": np.abs(flat(ours) - flat(ref)) / span}
    return ({k: (float(np.mean(v)), float(np.max(v))) for k, v in step_err.items()},
            {k: (float(np.mean(v)), float(np.max(v))) for k, v in final.items()})


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_adam_is_as_close_to_float32_as_bnb_adam8bit_on_the_demo_gradients(seed):
    steps, final = _distances(*demo_gradients(seed, 100, LR))
    # measured (seeds 0, 1): steps off by 0.79-0.81 % of lr on average (ours, second
    # moments rounded stochastically; 0.73-0.75 % to nearest) and 0.74-0.75 %
    # (bitsandbytes), at most 34-45 % (ours) and 61-198 % (bitsandbytes); final
    # parameters off by 0.40 % of lr * 100 on average (ours; 0.37 % to nearest) and 0.37 %
    # (bitsandbytes), at most 11-12 % (ours) and 14-52 % (bitsandbytes)
    for kind in (steps, final):
        assert kind["ours"][0] <= 1.2 * kind["bnb"][0], kind  # mean
        assert kind["ours"][1] <= 1.5 * kind["bnb"][1], kind  # max
    assert final["ours"][0] < 0.01 and steps["ours"][0] < 0.02


def test_int8_adam_is_as_close_to_float32_as_bnb_adam8bit_on_wide_gradient_scales():
    """Gradients whose magnitudes span far more than a block's 8-bit range: a second
    moment too small for the unsigned map's smallest entry must not be stored as 0 under
    a nonzero first moment (quantized.nonzero_code); before that rule, one step here was
    86 with lr 1e-3 (8.6e4 lr; bitsandbytes 171 % of lr). Measured since: step error
    mean 3.7 %, max 173 % of lr (bitsandbytes 6.3 %, 99 %; ours to nearest 3.2 %, 95 %).
    The second moments are rounded stochastically (the default): unbiased, but a value
    in the map's lowest decades may be stored at the entry below it, up to 2.7 times
    smaller (the unsigned map's 7.75e-7 and 2.125e-6 of the scale), which makes that
    step up to 1.66 times float32's; its largest error is 1.3-1.7 lr over the
    optimizer's seeds 0-4, hence the bound of twice bitsandbytes' (to nearest: 1.5
    times)."""
    steps, final = _distances(*lognormal_gradients(0, 20))
    assert steps["ours"][0] <= 1.2 * steps["bnb"][0], steps
    assert steps["ours"][1] <= 2.0 * steps["bnb"][1], steps
    assert final["ours"][1] <= 1.5 * final["bnb"][1], final
