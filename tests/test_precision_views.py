"""``opt.state`` of reduced-precision groups: what a user reads per parameter."""

from __future__ import annotations

import numpy as np
import pytest

import fastmoments as fm


def test_int8_state_reads_as_its_dequantized_values():
    """int8 codes share block scales across parameters: opt.state gives each parameter
    its dequantized values (read-only), equal to the state_dict's float32 conversion."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5000).astype(np.float32),
              rng.standard_normal((3, 4)).astype(np.float32)]
    opt = fm.Adam(params, lr=1e-2, state_dtype="int8")
    for _ in range(3):
        opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    plain = fm.Adam([p.copy() for p in params], lr=1e-2)  # float32 state
    plain.load_state_dict(opt.state_dict())  # int8 -> float32: dequantized
    for got, want, p in zip(opt.state, plain.state, params):
        assert set(got) == {"exp_avg", "exp_avg_sq"}  # no block scales listed
        for name in got:
            assert got[name].shape == p.shape and got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], want[name])
            with pytest.raises(ValueError):
                got[name][...] = 0  # a copy: writing to it would change nothing


def test_bfloat16_state_views_stay_views():
    params = [np.ones(6, np.float32)]
    opt = fm.Adam(params, state_dtype="bfloat16")
    opt.step([np.full(6, 0.5, np.float32)])
    view = opt.state[0]["exp_avg"]
    assert np.shares_memory(view, opt._groups[0].state["exp_avg"])
