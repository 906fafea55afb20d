"""The tutorial scripts in examples/: each runs (quick settings) and shows what it claims."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from children import run_child

import fastmoments as fm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` by path (the folder is no package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastmoments_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reddi_counterexample_adam_goes_to_the_wrong_end(capsys):
    finals = load("reddi_counterexample").main(quick=True)
    assert finals["Adam"] > 0.9  # the worst point of [-1, 1]
    assert finals["AMSGrad"] < -0.9  # the optimum is -1
    assert finals["Yogi"] < -0.9
    assert finals["ADOPT"] < -0.9  # Adam's beta2, normalized by the earlier steps
    assert "final x" in capsys.readouterr().out


def test_checkpoint_resume_is_bit_for_bit(capsys):
    example = load("checkpoint_resume")
    assert example.main(quick=True, use_save=False) is True  # state_dict + np.savez
    if hasattr(fm.Adam, "save") and hasattr(fm.Adam, "load"):
        assert example.main(quick=True, use_save=True) is True  # opt.save / opt.load
    out = capsys.readouterr().out
    assert "bit for bit: True" in out and "False" not in out


def test_checkpoint_resume_detects_a_lost_state(capsys, monkeypatch):
    """The comparison is not vacuous: restoring only the parameters is caught."""
    example = load("checkpoint_resume")

    def params_only(path, opt, flat):
        import numpy as np

        with np.load(path, allow_pickle=False) as archive:
            flat.data[:] = archive["params"]
        opt.step_count = 20  # the right step count (quick: 40 steps, saved at 20), no moments

    monkeypatch.setattr(example, "load_checkpoint", params_only)
    assert example.main(quick=True, use_save=False) is False


def test_linear_regression_comparison_reaches_the_noise_floor(capsys):
    results = load("linear_regression_comparison").main(quick=True)
    assert list(results) == ["SGD", "Momentum", "Adagrad", "RMSProp", "Adam", "Yogi"]
    for label, losses in results.items():
        assert len(losses) == 3  # before training and after each of 2 epochs
        assert losses[-1] < losses[0] / 20, label
    assert results["SGD"][-1] < 0.01  # noise floor 0.005
    out = capsys.readouterr().out
    assert "epoch" in out and "Yogi" in out


def test_digits_mlp_learns(capsys):
    results = load("digits_mlp").main(quick=True)
    assert set(results) == {"SGD+momentum", "RMSprop", "Adam", "AdamW", "Yogi"}
    for label, r in results.items():
        assert r["final_loss"] < r["initial_loss"], label
        assert len(r["curve"]) == 11
    # well above chance on held-out data (10 classes for the digits, 3 for the fallback)
    assert results["Adam"]["test_accuracy"] > 0.6
    out = capsys.readouterr().out
    assert ("digits:" in out) or ("scikit-learn is not installed" in out)


def test_torch_interop_matches_torch_optim(capsys):
    pytest.importorskip("torch")
    import torch

    result = load("torch_interop").main(quick=True)
    assert result["cpu"] < 1e-12
    if torch.cuda.is_available():
        assert result["cuda"] < 1e-10
    else:
        assert result["cuda"] is None
        assert "GPU part is skipped" in capsys.readouterr().out


def test_an_example_runs_as_a_script(tmp_path):
    """From another folder, with the fastmoments under test (``run_child`` checks it)."""
    done = run_child(
        [sys.executable, str(EXAMPLES / "reddi_counterexample.py"), "--quick", "--C", "4"],
        cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "1/(1+C^2) = 0.05882" in done.stdout
    assert "Adam  " in done.stdout
