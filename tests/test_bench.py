"""Smoke tests of ``fastmoments bench``: structure and sanity of the results, never speed."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from fastmoments.tools import bench
from fastmoments.tools.bench import cases

FAST = ["--budget", "0", "--quiet", "--threads", "1"]


def _run_json(capsys, *argv):
    rc = bench.main([*argv, *FAST, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_time_steps_blocks_short_calls():
    """A short call is timed in blocks of consecutive calls (its own hot loop), a long
    one alone; every case gets one sample per round."""
    counts = {"short": 0, "long": 0}

    def short():
        counts["short"] += 1

    def long():
        counts["long"] += 1
        end = time.perf_counter() + 300e-6
        while time.perf_counter() < end:
            pass

    cases = [bench.Case(short, 0, 10, 4, 1), bench.Case(long, 0, 10, 4, 1)]
    fast, slow = bench.time_steps(cases, budget=0.0, warmup=1, min_repeats=5)
    assert fast.repeats == slow.repeats == 5
    assert counts["long"] == 1 + 1 + 5  # warm-up, estimate, one call per round
    assert counts["short"] > 1 + 1 + 5 * 10  # blocks of many calls
    assert 0 < fast.min <= fast.median < slow.min


def test_traffic_and_chunks():
    assert bench.traffic(0) == (2, 1)
    assert bench.traffic(2) == (4, 3)  # Adam: p, g, m, v read; p, m, v written
    assert cases.chunk_sizes(2500, 1000) == [1000, 1000, 500]
    assert cases.chunk_sizes(7, 1000) == [7]
    assert cases.chunk_sizes(2000, 1000) == [1000, 1000]
    assert bench.rule_states("Adam") == 2
    assert bench.rule_states("SGD") == 1  # benchmarked with momentum


@pytest.mark.parametrize("n_states", [0, 1, 2, 3, 4, 6])  # Adan has 4
@pytest.mark.parametrize("n", [17, 70_000])  # serial and parallel (threshold 32768)
def test_ceiling_kernel_reads_and_writes_every_buffer(n_states, n):
    case = bench.ceiling_case(n_states, n, np.float64)
    p, g, *states = case.keep[0]
    p0 = p.copy()
    case.step()
    np.testing.assert_array_equal(p, p0 + g)
    for s in states:
        np.testing.assert_array_equal(s, g)
    assert case.bytes_per_step == (3 + 2 * n_states) * 8 * n


@pytest.mark.parametrize("reads, writes", [(2, 0), (3, 1), (4, 2), (1, 1), (3, 3)])
@pytest.mark.parametrize("n", [17, 70_000])
def test_pass_ceiling_reads_and_writes_its_buffers(reads, writes, n):
    kernel = bench.pass_ceiling_kernel(reads, writes, n >= 32768)
    arrays = [np.random.default_rng(k).random(n + 3) for k in range(reads)]
    before = [a.copy() for a in arrays]
    total = kernel(n, *arrays)
    others = sum(before[writes:]) if writes < reads else None
    for k, (a, b) in enumerate(zip(arrays, before)):
        np.testing.assert_array_equal(a[n:], b[n:])  # only the first n elements
        if k >= writes:
            np.testing.assert_array_equal(a, b)  # read only
        elif others is None:
            np.testing.assert_array_equal(a[:n], -b[:n])
        else:
            np.testing.assert_allclose(a[:n], b[:n] + others[:n], rtol=1e-15)
    if writes == 0:
        assert total == pytest.approx(others[:n].sum(), rel=1e-12)


@pytest.mark.parametrize("n", [17, 70_000])
def test_pass_ceiling_stores_to_buffers_it_does_not_read(n):
    # LAMB's first CPU pass: reads p, g, m, v, writes m, v in place and r (not read)
    kernel = bench.pass_ceiling_kernel(4, 3, n >= 32768, store_only=1)
    arrays = [np.random.default_rng(k).random(n + 3) for k in range(4)]
    stored = np.full(n + 3, np.nan)
    before = [a.copy() for a in arrays]
    kernel(n, *arrays, stored)
    others = before[2] + before[3]
    for k in (0, 1):
        np.testing.assert_allclose(arrays[k][:n], before[k][:n] + others[:n], rtol=1e-15)
    for k in range(4):
        np.testing.assert_array_equal(arrays[k][n:], before[k][n:])
    np.testing.assert_array_equal(arrays[2], before[2])
    np.testing.assert_array_equal(arrays[3], before[3])
    np.testing.assert_array_equal(stored[:n], others[:n])
    assert np.isnan(stored[n:]).all()
    with pytest.raises(ValueError, match="buffers not read"):
        bench.pass_ceiling_kernel(2, 3, False, store_only=1)


@pytest.mark.parametrize("reads, writes, store_only",
                         [(2, 0, 0), (3, 1, 0), (4, 2, 0), (1, 1, 0), (3, 3, 0), (4, 3, 1)])
def test_cuda_pass_ceiling_makes_the_cpu_passes_stores(monkeypatch, reads, writes, store_only):
    """Under the simulator, 4 threads per block, 3 blocks (a grid-stride loop): the same
    stores as the CPU pass kernel; a pass that only reads stores nothing."""
    from numba import cuda

    import fastmoments as fm
    from fastmoments.kernels import cuda as _gpu

    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 4)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    n = 37
    arrays = [np.random.default_rng(k).random(n + 3) for k in range(reads)]
    stored = [np.full(n + 3, np.nan) for _ in range(store_only)]
    expected = [a.copy() for a in arrays + stored]
    bench.pass_ceiling_kernel(reads, writes, False, store_only)(n, *expected)
    device = [cuda.to_device(a) for a in arrays + stored]
    _gpu.launch(bench.cuda_pass_ceiling_kernel(reads, writes, store_only), n, n, *device)
    for got, want, before in zip(device, expected, arrays + stored):
        np.testing.assert_array_equal(got.copy_to_host(), want)
        if writes == 0:
            np.testing.assert_array_equal(got.copy_to_host(), before)


def test_multipass_rules_declare_their_passes_and_get_matching_ceilings():
    n = 3000
    lamb = bench.fastmoments_case("LAMB", n, np.float32, "flat")
    # pass 1 stores the update r in a buffer it does not read (the 4th number)
    assert lamb.traffic_passes == ((4, 3, n, 1), (2, 1, n)) and not lamb.single_pass
    assert lamb.bytes_per_step == 10 * 4 * n
    assert cases.traffic_label(lamb.traffic_passes) == "4r/3w(1new)+2r/1w"
    ceiling = bench.ceiling_for(lamb)
    assert ceiling.traffic_passes == lamb.traffic_passes
    assert ceiling.bytes_per_step == lamb.bytes_per_step
    arrays, stored_only = ceiling.keep
    assert len(arrays) == 4 and len(stored_only) == 1  # p, g, m, v and r
    ceiling.step()
    assert np.isfinite(stored_only[0]).all() and stored_only[0].any()
    # ND-Adam on 1-D parameters is Adam: one pass, the single-pass ceiling
    nd = bench.fastmoments_case("NDAdam", n, np.float32, "flat")
    assert nd.traffic_passes == ((4, 3, n),) and nd.single_pass
    assert bench.ceiling_for(nd).n_states == 2
    swats = bench.fastmoments_case("SWATS", n, np.float32, "flat")
    assert swats.traffic_passes == ((4, 3, n),)
    assert bench.ceiling_for(swats).n_states == 2
    for _ in range(20):  # benchmarked in its Adam phase: it does not switch
        swats.step()
    assert swats.current_passes() == swats.traffic_passes
    assert not swats.keep[0].switched


@pytest.mark.parametrize("rule, kwargs, passes", [
    ("Adan", {}, ((6, 5),)),  # four state buffers: the single-pass ceiling
    ("AdamW", {"cautious": True}, ((2, 0), (4, 3))),  # count g, m; then AdamW's pass
    ("Adam", {"cautious": True, "weight_decay": 0.1}, ((3, 0), (4, 3))),  # L2: p too
    ("Lion", {"cautious": True}, ((2, 0), (3, 2))),
    ("Adan", {"cautious": True}, ((5, 4), (5, 1))),
])
def test_new_rules_and_cautious_passes_get_matching_ceilings(rule, kwargs, passes):
    n = 3000
    case = bench.fastmoments_case(rule, n, np.float32, "flat", kwargs=kwargs)
    assert case.traffic_passes == tuple((r, w, n) for r, w in passes)
    ceiling = bench.ceiling_for(case)
    assert ceiling.traffic_passes == case.traffic_passes
    assert ceiling.bytes_per_step == case.bytes_per_step
    ceiling.step()
    case.step()


def test_every_rule_is_benchmarked():
    """The bench and the asv suite take their rules from ``fastmoments.__all__``."""
    rules = set(cases.optimizer_classes())
    assert {"ADOPT", "AdEMAMix", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Adan"} <= rules


def test_ndadam_passes_on_matrices():
    import fastmoments as fm

    flat = fm.FlatParams([np.ones((30, 40), np.float32), np.ones(7, np.float32)])
    opt = fm.NDAdam(flat)
    assert opt.traffic() == [[  # one param group
        (4, 3, 7), (2, 0, 1200), (3, 1, 1200), (3, 2, 1200), (1, 1, 1200)]]
    case = bench.fastmoments_case("NDAdam", 10, np.float32, "flat")
    assert case.traffic_passes == tuple(case.keep[0].traffic()[0]) == ((4, 3, 10),)


def test_numpy_adam_follows_fastmoments_adam():
    # the comparison row computes the same thing as the rule it is compared with
    fm_case = bench.fastmoments_case("AdamW", 3000, np.float64, "flat")
    np_case = bench.numpy_case("AdamW", 3000, np.float64, "list", chunk=1000)
    for _ in range(3):
        fm_case.step()
        np_case.step()
    flat = fm_case.keep[1]
    mine = np.concatenate([a[0] for a in np_case.keep[0]])
    np.testing.assert_allclose(mine, flat.data, rtol=1e-12, atol=1e-15)


def test_json_results(capsys):
    doc = _run_json(capsys, "--rules", "adam,sgd", "--sizes", "1000", "--compare", "torch",
                    "--tiny", "--many", "--many-shape", "3x10", "--dtypes", "float32,float64")
    assert doc["format"] == "fastmoments-bench/1"
    machine = doc["machine"]
    for key in ("cpu", "cores", "numba", "numpy", "torch", "date", "parallel_threshold"):
        assert key in machine
    assert machine["numba"] and machine["numpy"]
    rows = doc["results"]
    mine = [r for r in rows if r["impl"] == "fastmoments"]
    # 2 rules x 2 paths x 2 dtypes x 3 scenarios
    assert len(mine) == 24
    assert {(r["rule"], r["path"], r["scenario"]) for r in mine} == {
        (rule, path, scenario) for rule in ("Adam", "SGD") for path in ("flat", "list")
        for scenario in ("sizes", "tiny", "many")
    }
    for r in rows:
        assert _positive(r["time_min_s"]) and _positive(r["time_median_s"])
        assert r["time_min_s"] <= r["time_median_s"]
        assert _positive(r["gbps"]) and r["repeats"] >= 5
        reads, writes = (int(x[:-1]) for x in r["traffic"].split("/"))
        itemsize = 4 if r["dtype"] == "float32" else 8
        assert r["bytes_per_step"] == (reads + writes) * itemsize * r["size"]
        assert r["single_pass"]
        assert r["threads"] == 1 and r["backend"] == "cpu"
        if r["impl"] != "ceiling":
            assert _positive(r["fraction"]) and _positive(r["ceiling_gbps"])
    adam = [r for r in mine if r["rule"] == "Adam"]
    assert all(r["traffic"] == "4r/3w" for r in adam)
    assert {r["arrays"] for r in mine if r["scenario"] == "many"} == {3}
    assert {r["size"] for r in mine if r["scenario"] == "tiny"} == {bench.TINY_SIZE}
    pytest.importorskip("torch")
    impls = {r["impl"] for r in rows}
    assert {"ceiling", "fastmoments", "torch-fused", "torch-foreach", "numpy"} <= impls
    assert all(_positive(r["speedup_vs_torch_fused"]) for r in mine)
    # "x fused" is the ratio to torch fused timed in the same rounds as the row
    for r in mine:
        assert r["speedup_vs_torch_fused"] == r["torch_fused_alongside_s"] / r["time_min_s"]
    assert doc["targets"] and all(isinstance(t["met"], bool) for t in doc["targets"])


def test_table_output(capsys):
    rc = bench.main(["--rules", "rmsprop", "--sizes", "500", "--paths", "list", "--chunk",
                     "100", *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    assert "GB/s" in out and "of ceil" in out and "RMSprop" in out
    row = next(line for line in out.splitlines() if "RMSprop" in line)
    assert " 5 " in row and "3r/2w" in row  # 5 arrays of 100; square_avg only


def test_crossover_and_first_step(capsys):
    doc = _run_json(capsys, "--rules", "sgd", "--sizes", "none", "--paths", "flat",
                    "--crossover", "--crossover-sizes", "100,2000", "--first-step",
                    "--first-step-sizes", "100")
    assert doc["results"] == []
    cross = doc["crossover"]
    assert [r["size"] for r in cross] == [100, 2000]
    assert all(_positive(r["serial_min_s"]) and _positive(r["parallel_min_s"]) for r in cross)
    assert len(doc["crossover_summary"]) == 1
    (first,) = doc["first_step"]
    for key in ("import_s", "cold_first_step_s", "cached_first_step_s", "second_step_s"):
        assert _positive(first[key])
    if importlib.util.find_spec("scipy") is not None:  # also measured without it
        assert _positive(first["cold_no_scipy_s"]) and _positive(first["cached_no_scipy_s"])


def test_first_step_child_can_hide_a_package(tmp_path):
    hidden = bench.first_step("SGD", 100, cache_dir=str(tmp_path), hide=("scipy",))
    assert hidden["scipy_loaded"] is False and _positive(hidden["first_step_s"])
    if importlib.util.find_spec("scipy") is not None:
        # numba imports it, when installed, on the first compilation of a process
        shown = bench.first_step("SGD", 100, cache_dir=str(tmp_path))
        assert shown["scipy_loaded"] is True


def test_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "gbps.png"
    rc = bench.main(["--rules", "sgd,lion", "--sizes", "100,1000", "--plot", str(png), *FAST])
    capsys.readouterr()
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--rules", "adamq"], "unknown adamq"),
    (["--sizes", "1e3,abc"], "not a number"),
    (["--dtypes", "float16"], "float16"),
    (["--threads", "4096"], "at most"),
    (["--many-shape", "10by10"], "ARRAYSxELEMENTS"),
    (["--block-sizes", "128"], "only with --backend cuda"),
    (["--backend", "cuda", "--block-sizes", "256,2048"], "1..1024"),
    (["--backend", "cuda", "--block-sizes", "none"], "1..1024"),
])
def test_bad_options_exit_2(capsys, argv, message):
    assert bench.main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


_NO_CUDA = """
import json
from numba import cuda
available = cuda.is_available()  # numba's answer, asked before the bench runs
from fastmoments.tools import bench
rc = bench.main(["--backend", "cuda", "--sizes", "none", "--quiet"])
print(json.dumps({"available": available, "rc": rc}))
"""


def test_cuda_backend_exits_2_exactly_when_numba_sees_no_device():
    """In a fresh process without the simulator that tests/conftest.py turns on: where
    numba finds no usable device the bench refuses with a clear message (exit 2), where
    it finds one the bench runs; a bench that succeeds without a device fails here."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", _NO_CUDA], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["available"]:
        assert out["rc"] == 0, proc.stderr
        return
    assert out["rc"] == 2, proc.stderr
    assert "--backend cuda" in proc.stderr and "no usable CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


def _fake_torch_bench(calls: list) -> types.ModuleType:
    """A stand-in for fastmoments.tools.torch_bench with the interface bench expects."""
    module = types.ModuleType("fastmoments.tools.torch_bench")

    def add_arguments(parser):
        parser.add_argument("--models", default="mlp")
        parser.add_argument("--budget", type=float, default=9.0)  # bench's own: kept
        parser.set_defaults(run=None)  # bench stays the handler

    def run(args):
        calls.append(args)
        return {"table": "fake torch-module table", "models": args.models,
                "budget": args.budget, "threads": args.threads}

    module.add_arguments, module.run = add_arguments, run
    return module


def test_torch_runs_the_torch_module_benchmark(capsys, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, bench.cli.TORCH_BENCH, _fake_torch_bench(calls))
    doc = _run_json(capsys, "--sizes", "none", "--torch", "--models", "cnn")
    assert len(calls) == 1 and doc["results"] == []
    # its own option and bench's shared ones, parsed by bench
    assert doc["torch_modules"] == {"table": "fake torch-module table", "models": "cnn",
                                    "budget": 0.0, "threads": [1]}
    assert bench.main(["--sizes", "none", *FAST]) == 0  # without --torch: not run
    assert len(calls) == 1 and "torch-module" not in capsys.readouterr().out
    assert bench.main(["--sizes", "none", "--torch", *FAST]) == 0
    assert "fake torch-module table" in capsys.readouterr().out


def test_torch_without_the_torch_module_benchmark_exits_2(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, bench.cli.TORCH_BENCH, None)  # as if not installed
    assert bench.main(["--sizes", "none", "--torch", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--torch" in err and "fastmoments.tools.torch_bench" in err
    assert "Traceback" not in err


_SIMULATED = """
import json, sys
import fastmoments as fm
from fastmoments.tools import bench
fm.config.cuda_threads_per_block = 4
fm.config.cuda_max_blocks = 3
sys.exit(bench.main(["--backend", "cuda", "--rules", "adam", "--sizes", "40", "--chunk", "16",
                     "--budget", "0", "--quiet", "--json"]))
"""


def test_cuda_backend_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", _SIMULATED], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = doc["results"]
    assert {(r["impl"], r["path"]) for r in rows} == {
        ("device-copy", "flat"), ("ceiling", "flat"), ("fastmoments", "flat"),
        ("fastmoments", "list")}
    assert all(r["backend"] == "cuda" and r["threads"] is None for r in rows)
    assert all(_positive(r["gbps"]) for r in rows)
    assert next(r for r in rows if r["path"] == "list")["arrays"] == 3
    # the device's copy bandwidth: one read and one write of 40 float32 per step, and
    # every other row's GB/s as a fraction of it
    copy = next(r for r in rows if r["impl"] == "device-copy")
    assert copy["traffic"] == "1r/1w(1new)" and copy["bytes_per_step"] == 2 * 40 * 4
    for r in rows:
        if r is not copy:
            assert r["copy_gbps"] == copy["gbps"]
            assert math.isclose(r["fraction_of_copy"], r["gbps"] / copy["gbps"])


_BLOCK_SIZES = """
import json, sys
import fastmoments as fm
from fastmoments.kernels import cuda as _gpu
from fastmoments.kernels import segmented_run as _segmented_run
from fastmoments.tools import bench
launched = []  # the threads per block of every launch: element-wise, ceiling, segmented
for module in (_gpu, _segmented_run):
    def recording(n, _grid=module._grid):
        grid = _grid(n)
        launched.append(grid[1])
        return grid
    module._grid = recording
fm.config.cuda_threads_per_block = 4
rc = bench.main(["--backend", "cuda", "--rules", "adam,lamb", "--sizes", "40", "--paths",
                 "flat", "--block-sizes", "2,3", "--budget", "0", "--quiet",
                 "--crossover", "--crossover-sizes", "100", "--save", sys.argv[1]])
print(json.dumps({"rc": rc, "launched": sorted(set(launched)),
                  "after": fm.config.cuda_threads_per_block}))
"""


def test_cuda_block_sizes_under_the_simulator(tmp_path):
    """--block-sizes: each row set launched with its block size (the ceiling too), the
    device copy once, the fastest block size per row, and the setting restored."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    saved = tmp_path / "blocks.json"
    proc = subprocess.run([sys.executable, "-c", _BLOCK_SIZES, str(saved)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text, _, last = proc.stdout.rstrip().rpartition("\n")
    shown = json.loads(last)
    assert shown == {"rc": 0, "launched": [2, 3], "after": 4}
    doc = json.loads(saved.read_text())
    assert doc["settings"]["block_sizes"] == [2, 3]
    rows = doc["results"]
    assert all(r["threads"] is None for r in rows)
    assert [r["block_size"] for r in rows if r["impl"] == "device-copy"] == [None]
    mine = {(r["rule"], r["block_size"]) for r in rows if r["impl"] == "fastmoments"}
    assert mine == {(rule, b) for rule in ("Adam", "LAMB") for b in (2, 3)}
    ceilings = {(r["traffic"], r["block_size"]) for r in rows if r["impl"] == "ceiling"}
    assert ceilings == {(t, b) for t in ("4r/3w", "4r/2w+3r/1w") for b in (2, 3)}
    lamb = [r for r in rows if r["impl"] == "fastmoments" and r["rule"] == "LAMB"]
    assert all(r["traffic"] == "4r/2w+3r/1w" for r in lamb)  # its passes on the GPU
    summary = {s["rule"]: s for s in doc["block_size_summary"]}
    assert set(summary) == {"Adam", "LAMB"}
    for rule, s in summary.items():
        times = {r["block_size"]: r["time_min_s"] for r in rows
                 if r["impl"] == "fastmoments" and r["rule"] == rule}
        assert s["best_block_size"] == min(times, key=times.get)
        assert {int(k): v for k, v in s["speed_vs_best"].items()} == {
            b: times[s["best_block_size"]] / t for b, t in times.items()}
        assert f"block size {rule} flat 40 float32: fastest b{s['best_block_size']}" in text
    assert " b2 " in text and " b3 " in text  # the thr column
    # the serial/parallel crossover times the CPU loops with numba's threads
    assert [r["threads"] for r in doc["crossover"]] == [doc["machine"]["numba_threads"]] * 2
    copy_line = next(line for line in text.splitlines() if line.startswith("device copy 40"))
    assert all(f"{t} b{b} " in copy_line for t, b in ceilings)


def test_device_copy_case_copies_the_buffer():
    """The device-copy row times a real copy (under the simulator here)."""
    case = bench.device_copy_case(37, np.float32, seed=3)
    source, target = case.keep
    case.step()
    case.sync()
    expected = source.copy_to_host()
    assert np.array_equal(target.copy_to_host(), expected) and np.any(expected != 0)
    assert case.bytes_per_step == 2 * 37 * 4 and case.single_pass


_OTHER_COPY = """
import json, sys
sys.path.insert(0, sys.argv[1])  # a copy of the package, on this process's path only
import fastmoments
from fastmoments.tools import bench
assert fastmoments.__file__.startswith(sys.argv[1]), fastmoments.__file__
print(json.dumps(bench.first_step("SGD", 100, cache_dir=sys.argv[2])))
"""


def test_first_step_child_imports_the_fastmoments_of_its_parent(tmp_path):
    """A parent that imported fastmoments from a folder on its own ``sys.path`` (as asv
    does, with PYTHONPATH taken out of the environment) times that package in the child,
    not another one the environment would give it."""
    import shutil

    import fastmoments

    copy = tmp_path / "copy"
    shutil.copytree(os.path.dirname(fastmoments.__file__), copy / "fastmoments",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _OTHER_COPY, str(copy), str(tmp_path / "c")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fastmoments_file"].startswith(str(copy)), out["fastmoments_file"]
    assert _positive(out["first_step_s"])
