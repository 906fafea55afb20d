"""``fastmoments bench --state-dtype``: the widths of the traffic, the ceilings of those
widths, the bytes of state per parameter and the bitsandbytes and torchao peers.
Structure and exact byte counts only, never speed."""

import json
import math

import numpy as np
import pytest

from fastmoments.tools import bench
from fastmoments.tools.bench import cases

FAST = ["--budget", "0", "--quiet", "--threads", "1"]
N = 8192  # a tiny size that int8 still quantizes (tensors from 4096 elements), 32 blocks

BF16_ADAM = bench.Storage("float32", "float32", ("uint16", "uint16"), (False, False))
INT8_ADAM = bench.Storage("float32", "float32", ("uint8", "uint8"), (True, True))


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _bnb_installed():
    try:
        cases.import_bitsandbytes()
    except ImportError:
        return False
    return True


def test_storage_bytes_and_labels():
    # the figures: bf16-state Adam moves 20 bytes per element, fp32 28
    assert BF16_ADAM.bytes_per_step(10) == 200 and not BF16_ADAM.uniform
    assert BF16_ADAM.label == "p4 g4 s2,2"
    # int8: 1 byte per state and element, plus a float32 scale per block read and written
    assert INT8_ADAM.bytes_per_step(512, blocks=2) == 512 * 16 + 2 * 2 * 8
    assert INT8_ADAM.label == "p4 g4 s1q,1q"
    fp32 = bench.Storage("float32", "float32", ("float32", "float32"), (False, False))
    assert fp32.uniform and fp32.bytes_per_step(10) == 280


@pytest.mark.parametrize("n", [1000, 70_000])  # serial and parallel (threshold 32768)
def test_storage_ceiling_loads_and_stores_every_buffer_at_its_width(n):
    """p += g, each narrow state += 1 in its own type, each scale += 1 per block."""
    case = bench.storage_ceiling_case(INT8_ADAM, n)
    (p, g, s0, a0, s1, a1), blocks = case.keep
    assert s0.dtype == s1.dtype == np.uint8 and a0.dtype == np.float32
    assert len(blocks) - 1 == len(a0) == math.ceil(n / 256) and blocks[-1] == n
    p0 = p.copy()
    for _ in range(300):  # the uint8 codes wrap around: 300 % 256
        case.step()
    np.testing.assert_allclose(p, p0 + 300 * g, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(s0, np.full(n, 300 % 256, np.uint8))
    np.testing.assert_array_equal(s1, s0)
    np.testing.assert_array_equal(a0, np.full(len(a0), 300, np.float32))
    np.testing.assert_array_equal(a1, a0)
    assert case.bytes_per_step == n * 16 + len(a0) * 16
    bf = bench.storage_ceiling_case(BF16_ADAM, n)
    (p, g, m, v), _ = bf.keep
    p0 = p.copy()
    bf.step()
    np.testing.assert_array_equal(p, p0 + g)
    assert m.dtype == v.dtype == np.uint16 and (m == 1).all() and (v == 1).all()
    assert bf.bytes_per_step == 20 * n


def test_storage_ceiling_blocks_follow_the_tensors():
    blocks = np.array([0, 256, 300, 556, 600], dtype=np.int64)  # two tensors of 300
    case = bench.storage_ceiling_case(INT8_ADAM, 600, blocks)
    (_, _, s0, a0, _, _), _ = case.keep
    case.step()
    assert (s0 == 1).all() and len(a0) == 4 and (a0 == 1).all()


def test_cuda_storage_ceiling_matches_the_cpu_one(monkeypatch):
    """Under the simulator (tests/conftest.py), 4 threads per block, 3 blocks: the same
    stores as the CPU kernel; int8 state has no CUDA kernel."""
    from numba import cuda

    import fastmoments as fm
    from fastmoments.kernels import cuda as _gpu

    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 4)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    n = 37
    host = [np.random.default_rng(0).random(n, dtype=np.float32),
            np.random.default_rng(1).random(n, dtype=np.float32),
            np.arange(n, dtype=np.uint16), np.full(n, 7, np.uint16)]
    blocks = np.zeros(1, np.int64)
    expected = [a.copy() for a in host]
    bench.storage_ceiling_kernel(BF16_ADAM, False)(blocks, *expected)
    device = [cuda.to_device(a) for a in host]
    _gpu.launch(bench.cuda_storage_ceiling_kernel(BF16_ADAM), n, cuda.to_device(blocks),
                *device)
    for got, want in zip(device, expected):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    np.testing.assert_array_equal(expected[2], np.arange(1, n + 1))
    with pytest.raises(NotImplementedError, match="no CUDA kernel"):
        bench.cuda_storage_ceiling_kernel(INT8_ADAM)


@pytest.mark.parametrize("n", [N, 10_000])  # a multiple of 256, and not
def test_state_bytes_per_parameter(n):
    """Measured from the optimizer's buffers: exactly 2 bytes per bfloat16 state, 1 plus
    one float32 scale per started block of 256 per int8 state (<= 1 + 4/256 when n is a
    multiple of 256), 4 per float32 state."""
    f32 = bench.fastmoments_case("Adam", n, state_dtype="float32")
    bf16 = bench.fastmoments_case("Adam", n, state_dtype="bfloat16")
    int8 = bench.fastmoments_case("Adam", n, state_dtype="int8")
    assert f32.state_bytes == 8 * n and f32.storage is None  # the default traffic
    assert f32.bytes_per_step == 28 * n
    assert bf16.state_bytes == 2 * 2 * n and bf16.storage == BF16_ADAM
    assert bf16.bytes_per_step == 20 * n
    blocks = math.ceil(n / 256)
    assert int8.state_bytes == 2 * (n + 4 * blocks) and int8.storage == INT8_ADAM
    assert int8.n_blocks == blocks and list(int8.blocks[[0, -1]]) == [0, n]
    assert int8.bytes_per_step == 16 * n + 16 * blocks
    if n % 256 == 0:
        assert int8.state_bytes / n / 2 == 1 + 4 / 256
    for case in (bf16, int8):  # the case steps the optimizer it measured
        before = case.keep[1].data.copy()
        case.step()
        assert not np.array_equal(before, case.keep[1].data)
    ceiling = bench.ceiling_for(int8)
    assert ceiling.storage == INT8_ADAM and ceiling.bytes_per_step == int8.bytes_per_step


def test_refused_combinations_are_skipped_with_a_reason():
    with pytest.raises(NotImplementedError, match="below 4096 elements"):
        bench.fastmoments_case("Adam", N, path="list", chunk=1000, state_dtype="int8")
    with pytest.raises(NotImplementedError, match="int8"):
        bench.fastmoments_case("ScheduleFreeAdamW", N, state_dtype="int8")  # z is an iterate
    with pytest.raises(NotImplementedError, match="LAMB"):
        bench.fastmoments_case("LAMB", N, state_dtype="bfloat16")
    # list path from 4096-element arrays: blocks per array, never across
    case = bench.fastmoments_case("Adam", 4 * 4100, path="list", chunk=4100,
                                  state_dtype="int8")
    assert case.arrays == 4 and case.n_blocks == 4 * 17  # 16 blocks of 256 and one of 4


def _run_json(capsys, *argv):
    rc = bench.main([*argv, *FAST, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_json_rows_per_state_dtype(capsys):
    doc = _run_json(capsys, "--rules", "adam,lion", "--sizes", str(N), "--paths", "flat",
                    "--state-dtype", "float32,bfloat16,int8")
    assert doc["settings"]["state_dtypes"] == ["float32", "bfloat16", "int8"]
    rows = doc["results"]
    mine = {(r["rule"], r["state_dtype"]): r for r in rows if r["impl"] == "fastmoments"}
    assert set(mine) == {(rule, s) for rule in ("Adam", "Lion")
                         for s in ("float32", "bfloat16", "int8")}
    per_state = {"float32": 4.0, "bfloat16": 2.0, "int8": 1 + 4 / 256}
    for (rule, state), r in mine.items():
        states = 2 if rule == "Adam" else 1
        for key in ("time_min_s", "time_median_s", "gbps", "fraction", "ceiling_gbps"):
            assert _positive(r[key]), key
        assert r["time_min_s"] <= r["time_median_s"] and r["arrays"] == 1
        assert r["state_bytes_per_param"] == states * per_state[state]
        assert r["state_bytes_per_param_per_state"] == per_state[state]
        width = {"float32": 4, "bfloat16": 2, "int8": 1}[state]
        scales = 8 * states * (N // 256) if state == "int8" else 0
        assert r["bytes_per_step"] == (12 + 2 * width * states) * N + scales
    assert mine[("Adam", "bfloat16")]["traffic"] == "4r/3w p4 g4 s2,2"
    assert mine[("Adam", "int8")]["traffic"] == "4r/3w p4 g4 s1q,1q"
    assert mine[("Adam", "float32")]["traffic"] == "4r/3w"
    ceilings = {r["traffic"]: r for r in rows if r["impl"] == "ceiling"}
    for r in mine.values():  # each row's ceiling moves its bytes
        assert ceilings[r["traffic"]]["bytes_per_step"] == r["bytes_per_step"]
        assert _positive(ceilings[r["traffic"]]["gbps"])
    if _bnb_installed():  # added without asking when installed
        peers = {r["rule"]: r for r in rows if r["impl"] == "bitsandbytes"}
        assert set(peers) == {"Adam", "Lion"}
        for rule, peer in peers.items():
            r = mine[(rule, "int8")]
            assert peer["bytes_per_step"] == r["bytes_per_step"] and _positive(peer["fraction"])
            # codes, scales and bitsandbytes' own 256-entry maps (1 KiB per state)
            states = 2 if rule == "Adam" else 1
            assert peer["state_bytes_per_param"] == states * (N + 4 * N // 256 + 1024) / N
            assert r["speedup_vs_bitsandbytes"] == r["bitsandbytes_alongside_s"] / r[
                "time_min_s"]
            assert peer["time_min_s"] == r["bitsandbytes_alongside_s"]


def test_table_has_the_state_columns(capsys):
    rc = bench.main(["--rules", "sgd", "--sizes", str(N), "--paths", "flat",
                     "--state-dtype", "bfloat16,int8", *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("scenario"))
    assert "state" in header and "state B/p" in header and "B/elem" in header
    row = next(line for line in out.splitlines()
               if "fastmoments" in line and "bfloat16" in line)
    assert "3r/2w p4 g4 s2" in row and "2.000" in row and "16.00" in row
    # without --state-dtype, the table keeps its columns
    rc = bench.main(["--rules", "sgd", "--sizes", "100", "--paths", "flat", *FAST])
    header = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("scenario"))
    assert rc == 0 and "state" not in header


@pytest.mark.parametrize("argv, message", [
    (["--state-dtype", "float16"], "unknown float16"),
    (["--state-dtype", ","], "one or more"),
    (["--compare", "bitsandbytes"], "--state-dtype int8"),
    (["--compare", "bitsandbytes", "--state-dtype", "bfloat16"], "--state-dtype int8"),
    (["--compare", "torchao"], "--state-dtype int8"),
    (["--compare", "torchao", "--state-dtype", "int8", "--backend", "cuda"],
     "--state-dtype int8"),
])
def test_bad_state_options_exit_2(capsys, argv, message):
    assert bench.main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_targets_of_reduced_state_rows():
    row = {"impl": "fastmoments", "backend": "cpu", "scenario": "sizes", "path": "flat",
           "dtype": "float32", "size": 10**7, "threads": 2, "rule": "Adam"}
    checked = bench.targets([
        {**row, "state_dtype": "bfloat16", "fraction": 0.95},
        {**row, "state_dtype": "int8", "fraction": 0.3, "speedup_vs_bitsandbytes": 6.0},
        {**row, "state_dtype": "float32", "fraction": 0.99},  # the default's targets
    ], [])
    got = {(t["target"], t["met"]) for t in checked}
    assert ("bfloat16 state: >= 0.90 of its ceiling", True) in got
    assert ("int8 state: >= 0.50 of its ceiling", False) in got
    assert ("int8 state: >= 5x bitsandbytes 8-bit", True) in got
    assert ("large buffers: >= 0.90 of ceiling", True) in got
    assert not any("large buffers" in t["target"] and "bfloat16" in t["subject"]
                   for t in checked)


@pytest.mark.parametrize("rule", sorted(cases.BNB_8BIT))
def test_bitsandbytes_peer_computes_the_same_step(rule):
    """The peer row times the same computation: after five steps from the same data,
    bitsandbytes' 8-bit optimizer and fastmoments' int8 one are as close to each other
    as each is to float32 state (a wrong hyperparameter would differ by the whole
    step), and its state is 8-bit (the case checks it)."""
    pytest.importorskip("bitsandbytes")  # strict mode fails once it is in the test extra
    import torch

    torch.set_num_threads(1)
    n = 3 * 4096
    peer = bench.bitsandbytes_case(rule, n)  # takes its first step
    mine = bench.fastmoments_case(rule, n, state_dtype="int8")
    exact = bench.fastmoments_case(rule, n, state_dtype="float32")
    start = bench.cases.host_data(n, np.float32, 0)[0].astype(np.float64)
    mine.step()
    exact.step()
    for _ in range(4):
        for case in (peer, mine, exact):
            case.step()
    theirs = peer.keep[1].detach().numpy().astype(np.float64)
    ours, reference = (c.keep[1].data.astype(np.float64) for c in (mine, exact))
    moved = np.abs(reference - start).mean()
    assert moved > 0
    # measured: mean differences of 0 to 0.7 % of the mean step; elements whose second
    # moment rounds to a low code step further, in both (a few per thousand)
    for a, b in ((ours, theirs), (ours, reference), (theirs, reference)):
        assert np.abs(a - b).mean() < 0.02 * moved
        assert (np.abs(a - b) > 0.1 * moved).mean() < 0.01
    assert peer.storage.states == ("uint8",) * peer.n_states and peer.n_blocks == n // 256


def _torchao_threads_1():
    """torch at one thread (the bench sets it too: torchao's compiled step is compiled
    for a thread count), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return lambda: torch.set_num_threads(before)


def _same_step(peer, rule, n):
    """After five steps from the same data, ``peer``'s parameters are as close to
    fastmoments' int8 ones as each is to float32 state's (a wrong hyperparameter would
    differ by the whole step)."""
    mine = bench.fastmoments_case(rule, n, state_dtype="int8")
    exact = bench.fastmoments_case(rule, n, state_dtype="float32")
    start = bench.cases.host_data(n, np.float32, 0)[0].astype(np.float64)
    mine.step()
    exact.step()
    for _ in range(4):
        for case in (peer, mine, exact):
            case.step()
    theirs = np.concatenate([t.detach().numpy() for t in peer.keep[1]]).astype(np.float64)
    ours, reference = (c.keep[1].data.astype(np.float64) for c in (mine, exact))
    moved = np.abs(reference - start).mean()
    assert moved > 0
    for a, b in ((ours, theirs), (ours, reference), (theirs, reference)):
        assert np.abs(a - b).mean() < 0.02 * moved
        assert (np.abs(a - b) > 0.1 * moved).mean() < 0.01


def test_torchao_peer_rows_and_step(capsys):
    """--compare torchao: a torchao row beside each int8 Adam row, timed in the same
    rounds, moving the same bytes, its state measured (codes, scales and torchao's own
    256-entry maps); the case computes the same step. Uncompiled (the same torch
    operations, measured to store the same codes as compiled: see
    tests/test_precision_torchao.py): a first compile takes 15-55 s here."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    restore = _torchao_threads_1()
    try:
        with torch.compiler.set_stance("force_eager"):
            doc = _run_json(capsys, "--rules", "adam", "--sizes", str(N), "--paths", "flat",
                            "--state-dtype", "int8", "--compare", "torchao")
            rows = doc["results"]
            (r,) = [r for r in rows if r["impl"] == "fastmoments"]
            (peer,) = [r for r in rows if r["impl"] == "torchao"]
            assert doc["machine"]["torchao"] and doc["settings"]["compare"] == ["torchao"]
            assert peer["bytes_per_step"] == r["bytes_per_step"] and _positive(peer["fraction"])
            assert peer["arrays"] == 1 and peer["traffic"] == r["traffic"]
            assert peer["state_bytes_per_param"] == 2 * (N + 4 * N // 256 + 1024) / N
            assert r["speedup_vs_torchao"] == r["torchao_alongside_s"] / r["time_min_s"]
            assert peer["time_min_s"] == r["torchao_alongside_s"]
            case = bench.torchao_case("Adam", N)  # takes its first step
            assert case.n_blocks == N // 256 and case.arrays == 1
            _same_step(case, "Adam", N)
    finally:
        restore()


def test_torchao_case_splits_off_what_is_not_a_whole_block():
    """torchao quantizes only tensors of a whole number of blocks: for another size the
    case holds that many blocks (8-bit state) and the rest (float32 state), and still
    computes the same step (run uncompiled here: the same torch operations)."""
    pytest.importorskip("torchao")
    import torch

    n = 4096 + 100
    restore = _torchao_threads_1()
    try:
        with torch.compiler.set_stance("force_eager"):
            case = bench.torchao_case("AdamW", n)
            opt, tensors = case.keep
            assert [t.numel() for t in tensors] == [4096, 100] and case.arrays == 2
            assert hasattr(opt.state[tensors[0]]["exp_avg_sq"], "codes")
            assert opt.state[tensors[1]]["exp_avg_sq"].dtype == torch.float32
            assert case.numel == n and case.n_blocks == math.ceil(n / 256)
            assert case.state_bytes == 2 * (4096 + 4 * 16 + 1024 + 4 * 100)
            _same_step(case, "AdamW", n)
        with pytest.raises(NotImplementedError, match="4096 elements or more"):
            bench.torchao_case("Adam", 4095)
        with pytest.raises(NotImplementedError, match="no 8-bit Lion"):
            bench.torchao_case("Lion", N)
    finally:
        restore()


def test_markdown_output(capsys):
    rc = bench.main(["--rules", "sgd", "--sizes", str(N), "--paths", "flat",
                     "--state-dtype", "bfloat16,int8", *FAST, "--markdown"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert "All rows:" in out and "size 8192" in out  # the columns equal in every row
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert {"impl", "rule", "state", "GB/s", "ceiling GB/s", "of ceil", "state B/p"} <= set(
        header)
    body = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in
            table[2:]]
    assert body and all(row["impl"] != "ceiling" for row in body)  # ceilings: a column
    assert {row["state"] for row in body if row["impl"] == "fastmoments"} == {
        "bfloat16", "int8"}
    assert all(float(row["GB/s"]) > 0 and float(row["ceiling GB/s"]) > 0 for row in body)
