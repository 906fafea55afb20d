"""``fastmoments demo``: the command line, its output, its errors, and the models behind it."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys

import numpy as np
import pytest
from children import run_child
from strict import skip_or_fail

from fastmoments.tools import cli
from fastmoments.tools.demo import app as demo
from fastmoments.tools.demo import data as _models
from fastmoments.tools.demo.models import Net

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["demo", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def summary_rows(out: str) -> dict[str, list[str]]:
    """The summary table's rows, by optimizer label: [lr, final loss, (accuracy), ...]."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("optimizer"))
    assert set(lines[start + 1]) == {"-"}
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        label, *cells = line.split()
        rows[label] = cells
    return rows


def curve_table(out: str) -> dict[str, dict[int, float]]:
    """The loss-at-checkpoints table: {label: {step: loss}} (first block of columns)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("step "))
    labels = lines[start].split()[1:]
    table: dict[str, dict[int, float]] = {label: {} for label in labels}
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        for label, cell in zip(labels, cells[1:], strict=True):
            table[label][int(cells[0])] = float(cell)
    return table


# ------------------------------------------------------------------- the command
def test_default_optimizers_train_and_print_the_tables(capsys):
    rc, out, _ = run_demo(capsys, "--steps", "30", "--no-plot")
    assert rc == 0
    rows = summary_rows(out)
    assert list(rows) == ["SGD+momentum", "RMSprop", "Adam", "AdamW", "Yogi"]
    curves = curve_table(out)
    assert set(curves) == set(rows)
    for label, curve in curves.items():
        assert sorted(curve) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
        assert curve[30] < curve[0], label  # every optimizer makes progress
        assert float(rows[label][1]) == pytest.approx(curve[30], rel=1e-3)
    initial = {c[0] for c in curves.values()}
    assert len(initial) == 1  # the same initialization for all
    for cells in rows.values():  # lr, loss, accuracy, step time, train s, jit s
        assert cells[2].endswith("%")
        assert float(cells[3]) > 0
    assert "600 samples, 2 features, 3 classes" in out
    assert "387 parameters, float64, FlatParams" in out


def test_quiet_prints_only_the_summary(capsys):
    rc, out, err = run_demo(capsys, "--steps", "30", "--quiet", "--no-plot",
                            "--optimizers", "adam,sgd,yogi")
    assert rc == 0
    assert list(summary_rows(out)) == ["Adam", "SGD", "Yogi"]
    assert "step " not in out.split("optimizer")[0]  # no loss table before the summary
    assert err == ""


def test_compare_is_deterministic_and_flat_equals_list_path():
    kwargs = dict(optimizers=["adam", "momentum"], steps=40, seed=3)
    _, _, flat = demo.compare(**kwargs, flat=True)
    _, _, again = demo.compare(**kwargs, flat=True)
    _, _, listed = demo.compare(**kwargs, flat=False)
    for a, b, c in zip(flat, again, listed, strict=True):
        np.testing.assert_array_equal(a.curve, b.curve)
        np.testing.assert_allclose(a.curve, c.curve, rtol=1e-12)
        assert a.final_loss < a.initial_loss
        assert a.accuracy is not None and 0.0 <= a.accuracy <= 1.0


@pytest.mark.parametrize("problem", ["logreg", "linreg"])
def test_other_problems_reduce_the_loss(problem):
    dataset, net, results = demo.compare(["adam", "sgd"], problem, steps=60, dtype="float32")
    assert net.dtype == np.float32
    for r in results:
        assert r.final_loss < 0.8 * r.initial_loss
        if problem == "linreg":
            assert dataset.task == "regression" and r.accuracy is None
        else:
            assert r.accuracy is not None and r.accuracy > 0.5


def test_every_preset_runs():
    names = sorted(demo.presets())
    assert {"sgd", "momentum", "nesterov", "adam", "amsgrad", "adamw", "yogi"} <= set(names)
    _, _, results = demo.compare(names, steps=5, batch_size=0)
    assert [r.name for r in results] == names
    for r in results:
        assert np.all(np.isfinite(r.curve)), r.name
        assert r.final_loss < r.initial_loss, r.name


NEW_RULES = {"adopt": "ADOPT", "ademamix": "AdEMAMix", "schedulefreeadamw": "ScheduleFreeAdamW",
             "schedulefreesgd": "ScheduleFreeSGD", "adan": "Adan", "c-adamw": "C-AdamW",
             "c-lion": "C-Lion"}


def test_the_newer_rules_are_choices_listed_by_help_and_train(capsys):
    """The rules since Adam's critics (and the cautious AdamW and Lion) are choices with
    a learning rate that trains the default problem, and --help names them."""
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in NEW_RULES:
        assert re.search(rf"\b{re.escape(name)}\b", help_text), name
    rc, out, _ = run_demo(capsys, "--steps", "60", "--quiet", "--no-plot", "--optimizers",
                          ",".join(NEW_RULES))
    assert rc == 0
    rows = summary_rows(out)
    assert list(rows) == list(NEW_RULES.values())
    presets = demo.presets()
    assert presets["c-adamw"].kwargs == {"cautious": True}
    for name, label in NEW_RULES.items():
        lr, final = rows[label][:2]
        assert float(lr) == presets[name].lr
        assert final != "diverged" and float(final) < 1.0, label  # from 1.30


def test_schedule_free_is_evaluated_at_its_average():
    """The loss the demo reports for a Schedule-Free rule is the one at x (opt.eval()),
    and training goes on from y (opt.train() after each evaluation)."""
    import fastmoments as fm

    _, _, (result,) = demo.compare(["schedulefreesgd"], steps=12, batch_size=0)
    dataset, net = demo.make_problem()
    params, _ = demo._attach(net, net.copy_params(), flat=True)
    opt = fm.ScheduleFreeSGD(params, lr=result.lr)
    for t in range(12):
        net.loss_grad(dataset.X, dataset.y)
        opt.step()
        if t == 5:
            opt.eval()
            assert net.loss(dataset.X, dataset.y) == result.curve[list(result.checkpoints).index(6)]
            opt.train()
    at_y = net.loss(dataset.X, dataset.y)
    opt.eval()
    assert result.final_loss == net.loss(dataset.X, dataset.y) != at_y


def test_lr_override_and_full_batch(capsys):
    rc, out, _ = run_demo(capsys, "--steps", "10", "--quiet", "--no-plot", "--lr", "0.02",
                          "--batch-size", "0", "--optimizers", "adam,radam")
    assert rc == 0
    for cells in summary_rows(out).values():
        assert float(cells[0]) == 0.02


def test_divergence_is_reported_not_raised(capsys):
    rc, out, _ = run_demo(capsys, "--steps", "50", "--quiet", "--no-plot", "--lr", "1e6",
                          "--problem", "linreg", "--optimizers", "sgd")
    assert rc == 0
    assert summary_rows(out)["SGD"][1] == "diverged"


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizers", "adam,foo"], "unknown optimizer 'foo'; valid names: "),
        (["--optimizers", ","], "valid names:"),
        (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["--steps", "ten"], "--steps: expected an integer, got 'ten'"),
        (["--lr", "-1"], "--lr: expected a finite number > 0"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
        (["--problem", "cnn"], "invalid choice: 'cnn'"),
    ],
)
def test_bad_options_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_optimizer_lists_every_valid_name(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--optimizers", "adamm"])
    err = capsys.readouterr().err
    for name in demo.presets():
        assert name in err


# ------------------------------------------------------------------ data files
def write_csv(path, X, y, header=True):
    with open(path, "w") as handle:
        if header:
            handle.write(",".join([f"x{k}" for k in range(X.shape[1])] + ["target"]) + "\n")
        for row, t in zip(X, y, strict=True):
            handle.write(",".join(f"{v:.6f}" for v in row) + f",{t}\n")


def test_classification_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = np.where(X[:, 0] - X[:, 2] > 0, 7, 2)  # labels need not be 0..k-1
    path = tmp_path / "tiny.csv"
    write_csv(path, X, y)
    rc, out, _ = run_demo(capsys, "--data", str(path), "--steps", "40", "--no-plot",
                          "--optimizers", "adam")
    assert rc == 0
    assert "tiny.csv: 80 samples, 3 features, 2 classes" in out
    (cells,) = summary_rows(out).values()
    assert float(cells[2].rstrip("%")) > 80.0
    curve = curve_table(out)["Adam"]
    assert curve[40] < curve[0]


def test_regression_npz_and_headerless_csv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = X @ [1.5, -2.0] + 0.25
    np.savez(tmp_path / "reg.npz", X=X, y=y)
    write_csv(tmp_path / "reg.csv", X, y, header=False)
    outs = []
    for name in ("reg.npz", "reg.csv"):
        rc, out, _ = run_demo(capsys, "--data", str(tmp_path / name), "--problem", "linreg",
                              "--steps", "30", "--no-plot", "--optimizers", "adam")
        assert rc == 0
        assert "60 samples, 2 features, regression" in out
        assert "accuracy" not in out
        outs.append(curve_table(out)["Adam"])
    for curve in outs:
        assert curve[30] < curve[0]
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-4)  # same data, two formats


@pytest.mark.parametrize(
    "content, argv, message",
    [
        (None, [], "does not exist"),
        ("1,2,0.5\n4,5,6.5\n", ["--problem", "logreg"], "whole-number class labels"),
        ("a,b\n1,x\n2,3\n", [], "expected comma-separated numbers"),
        ("1\n2\n3\n", [], "at least 2 columns"),
        ("1,2,nan\n3,4,1\n", [], "NaN, Inf or empty"),
        ("1,2,0\n3,4,0\n", ["--task", "classification"], "at least 2 classes"),
    ],
)
def test_bad_data_file_exits_2(tmp_path, capsys, content, argv, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    rc, out, err = run_demo(capsys, "--data", str(path), "--steps", "5", "--no-plot", *argv)
    assert rc == 2
    assert "fastmoments demo: error:" in err and message in err
    assert "optimizer" not in out


def test_plot_into_a_missing_folder_exits_2_before_training(tmp_path, capsys):
    rc, out, err = run_demo(capsys, "--plot", str(tmp_path / "no" / "such.png"))
    assert rc == 2
    assert "the folder does not exist" in err and out == ""


def test_bad_npz_and_extension(tmp_path):
    np.savez(tmp_path / "three.npz", a=np.zeros(3), b=np.zeros(3), c=np.zeros(3))
    (tmp_path / "table.xlsx").write_text("x")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(_models.DataError, match="expected arrays 'X' and 'y'"):
        _models.load_table(tmp_path / "three.npz")
    with pytest.raises(_models.DataError, match="expected a .csv or .npz file"):
        _models.load_table(tmp_path / "table.xlsx")
    with pytest.raises(_models.DataError, match="not a readable .npz"):
        _models.load_table(tmp_path / "fake.npz")


# ------------------------------------------------------------------------ plots
@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_plot_writes_a_png(tmp_path, capsys):
    path = tmp_path / "curves.png"
    rc, out, _ = run_demo(capsys, "--steps", "20", "--optimizers", "adam,sgd", "--plot",
                          str(path))
    assert rc == 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert f"loss curves written to {path}" in out


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_default_plot_when_matplotlib_is_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_demo(capsys, "--steps", "10", "--quiet", "--optimizers", "adam")[0] == 0
    assert (tmp_path / demo.DEFAULT_PLOT).read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib_is_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "_has_matplotlib", lambda: False)
    path = tmp_path / "curves.png"
    rc, _, err = run_demo(capsys, "--steps", "10", "--quiet", "--optimizers", "adam",
                          "--plot", str(path))
    assert rc == 0
    assert "needs matplotlib" in err
    assert not path.exists()
    monkeypatch.chdir(tmp_path)  # and no default plot, silently
    rc, _, err = run_demo(capsys, "--steps", "10", "--quiet", "--optimizers", "adam")
    assert rc == 0 and err == ""
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------- the pieces
def test_help_is_the_module_docstring(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert demo.__doc__.splitlines()[0] in out
    assert "--optimizers" in out and "--no-flat" in out


def test_sparkline():
    assert demo.sparkline([8, 4, 2, 1], 1, 8) == "█▆▃▁"  # log scale
    assert demo.sparkline([0, 1, 2], 0, 2, chars="abc") == "abc"  # linear (low <= 0)
    assert demo.sparkline([1.0, float("nan")], 1, 1) == "▁!"


@pytest.mark.parametrize(
    "kwargs, data",
    [
        (dict(hidden=6, activation="tanh"), _models.spiral(10, seed=1)),
        (dict(hidden=6, activation="relu"), _models.spiral(10, seed=2)),
        (dict(hidden=0), _models.blobs(40, classes=4, dim=3)),
        (dict(hidden=0, head="mse"), _models.linear(30, dim=3)),
        (dict(hidden=5, head="mse"), _models.linear(30, dim=3)),
    ],
)
def test_net_gradients_match_finite_differences(kwargs, data):
    net = Net(data.dim, data.n_out, seed=4, **kwargs)
    for p in net.params:  # nonzero biases, so that their gradients are tested too
        p += 0.1
    loss = net.loss_grad(data.X, data.y)
    assert loss == pytest.approx(net.loss(data.X, data.y), rel=1e-12)
    h = 1e-6
    for p, g in zip(net.params, net.grads, strict=True):
        for i in range(p.size):
            old = p.flat[i]
            p.flat[i] = old + h
            up = net.loss(data.X, data.y)
            p.flat[i] = old - h
            down = net.loss(data.X, data.y)
            p.flat[i] = old
            assert (up - down) / (2 * h) == pytest.approx(g.flat[i], abs=1e-7)


def test_net_writes_into_bound_gradient_views():
    import fastmoments as fm

    data = _models.spiral(20)
    net = Net(2, 3, hidden=4)
    flat = fm.FlatParams(net.copy_params())
    net.bind(flat.params, flat.grads)
    net.loss_grad(data.X[:16], data.y[:16])
    assert np.count_nonzero(flat.grad) > 0
    before = flat.grad.copy()
    net.loss_grad(data.X[:16], data.y[:16])  # same batch: same gradients, same buffer
    np.testing.assert_array_equal(flat.grad, before)


def test_builtin_data_is_deterministic():
    a, b = _models.spiral(seed=5), _models.spiral(seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, _models.spiral(seed=6).X)
    assert a.classes == 3 and a.n == 600 and a.X.dtype == np.float64
    assert _models.linear(dtype=np.float32).y.dtype == np.float32


def test_batches_cover_each_epoch_once():
    order = _models.batches(10, 3, seed=0)
    epoch = np.concatenate([next(order) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9
    assert next(_models.batches(10, 0, seed=0)) is None


# ------------------------------------------------------------- entry points
def console_script() -> str | None:
    """The ``fastmoments`` console script of this interpreter's environment (beside
    ``sys.executable``: the one ``pip install`` wrote), else the first on PATH."""
    folder = os.path.dirname(sys.executable)
    return shutil.which("fastmoments", path=folder) or shutil.which("fastmoments")


@pytest.mark.parametrize("launcher", ["module", "script"])
def test_entry_points(launcher, tmp_path):
    """``python -m fastmoments`` and the console script, from a folder that is not the
    checkout, run the fastmoments under test (``run_child`` checks its ``__file__``)."""
    if launcher == "module":
        cmd = [sys.executable, "-m", "fastmoments"]
    else:
        exe = console_script()
        if exe is None:
            skip_or_fail("the fastmoments console script is not installed")
        cmd = [exe]
    done = run_child(
        [*cmd, "demo", "--steps", "5", "--quiet", "--no-plot", "--optimizers", "adam"],
        cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^Adam\s", done.stdout, re.MULTILINE)
