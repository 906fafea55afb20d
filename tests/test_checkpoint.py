"""Checkpoints (``opt.save`` / ``opt.load``) and the torch.optim state-dict interop.

Guarantees checked here (see docs/reliability.md):

- resuming from a checkpoint continues bit-for-bit, for every rule and path;
- ``save`` is atomic: a process killed with SIGKILL at random moments while saving
  leaves a file that loads and equals one of the states it was writing; a failed write
  leaves the old file; the data is fsynced before the rename and the folder after;
- ``load`` never unpickles (a hostile file cannot run code) and refuses truncated,
  corrupted, foreign or mismatched files with ``CheckpointError``, changing nothing;
- torch.optim state dicts convert both ways and both sides then continue identically.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import time
import zipfile

import numpy as np
import pytest
from cases import CASES, TORCH_HAS, case_id, problem

import fastmoments as fm
from fastmoments.checkpoint import FORMAT_VERSION, CheckpointError
from fastmoments.interop import from_torch_state_dict, to_torch_state_dict

SHAPES = [(3, 4), (5,), (0,), (2, 3)]


def snapshot(opt, params):
    """Everything a checkpoint holds or a refused load must leave alone, bit-exact."""
    return {
        "params": [np.asarray(p).tobytes() for p in params],
        "state": [{n: np.asarray(b).tobytes() for n, b in g.state.items()} for g in opt._groups],
        "host": [dict(g.host_state) for g in opt._groups],
        "hyper": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "counters": (opt.step_count, opt.skipped_steps),
    }


def build(name, kwargs, path, params, dtype=np.float64):
    cls = getattr(fm, name)
    if path == "flat":
        flat = fm.FlatParams(params)
        return cls(flat, **kwargs), flat.params
    if path == "groups":
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
        return cls(groups, **kwargs), params
    return cls(params, **kwargs), params


def feed(opt, views, grads):
    flat = opt._groups[0].flat
    if flat is not None:
        for view, g in zip(flat.grads, grads, strict=True):
            view[...] = g
        opt.step()
    else:
        opt.step(grads)


# ----------------------------------------------------------- bit-exact resume
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("path", ["list", "flat", "groups"])
def test_resume_is_bit_exact(case, path, tmp_path):
    name, kwargs = case
    dtype = np.float32 if path == "flat" else np.float64
    params, grad = problem(shapes=SHAPES, steps=10, dtype=dtype)
    opt, views = build(name, kwargs, path, [p.copy() for p in params])
    for t in range(5):
        feed(opt, views, grad([np.asarray(v) for v in views], t))
    opt.save(tmp_path / "ck.npz")
    # a fresh optimizer with other hyperparameters and other params: all come from the file
    other_kwargs = {**kwargs, "lr": 0.123}
    resumed, rviews = build(name, other_kwargs, path, [np.zeros_like(p) for p in params])
    resumed.load(tmp_path / "ck.npz")
    assert snapshot(resumed, rviews) == snapshot(opt, views)
    for t in range(5, 10):
        feed(opt, views, grad([np.asarray(v) for v in views], t))
        feed(resumed, rviews, grad([np.asarray(v) for v in rviews], t))
    assert snapshot(resumed, rviews) == snapshot(opt, views)


def test_resume_keeps_a_schedule_and_the_skip_count(tmp_path):
    params, grad = problem(shapes=SHAPES, steps=8)

    def schedule(t):
        return 0.01 / (1 + t)

    opt = fm.Adam([p.copy() for p in params], lr=schedule, nonfinite="skip")
    bad = [g.copy() for g in grad(params, 0)]
    bad[0][0, 0] = np.nan
    for t in range(4):
        opt.step(grad(opt._groups[0].params, t))
    opt.step(bad)
    opt.save(tmp_path / "ck.npz")
    resumed = fm.Adam([np.zeros_like(p) for p in params], lr=schedule, nonfinite="skip")
    resumed.load(tmp_path / "ck.npz")
    assert resumed.skipped_steps == 1 and resumed.step_count == 4
    assert resumed.param_groups[0]["lr"] is schedule
    for t in range(4, 8):
        for o in (opt, resumed):
            o.step(grad(o._groups[0].params, t))
    assert snapshot(resumed, resumed._groups[0].params) == snapshot(opt, opt._groups[0].params)


def test_params_false_leaves_the_params_alone(tmp_path):
    params, grad = problem(shapes=SHAPES, steps=3)
    opt = fm.Adam([p.copy() for p in params], lr=0.01)
    opt.step(grad(params, 0))
    opt.save(tmp_path / "with.npz")
    opt.save(tmp_path / "without.npz", params=False)
    assert "param.0.npy" not in zipfile.ZipFile(tmp_path / "without.npz").namelist()
    for file, load_params in [("with.npz", False), ("without.npz", True)]:
        mine = [np.full(p.shape, 7.0) for p in params]
        other = fm.Adam(mine, lr=0.5)
        other.load(tmp_path / file, params=load_params)
        assert all(np.all(p == 7.0) for p in mine)
        assert other.step_count == 1 and other.param_groups[0]["lr"] == 0.01
        np.testing.assert_array_equal(other._groups[0].state["exp_avg"],
                                      opt._groups[0].state["exp_avg"])


def test_layout_is_flat_and_pickle_free(tmp_path):
    params, grad = problem(shapes=SHAPES, steps=2)
    opt = fm.NAdam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    opt.step(grad(params, 0))
    opt.save(tmp_path / "ck.npz")
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            ["meta"] + [f"state.{k}.{n}" for k in (0, 1) for n in ("exp_avg", "exp_avg_sq")]
            + [f"param.{i}" for i in range(4)]
        )
        meta = json.loads(str(npz["meta"]))
        assert all(npz[name].dtype != object for name in npz.files)
    assert meta["format"] == "fastmoments-checkpoint" and meta["format_version"] == 1
    assert meta["optimizer"] == "NAdam" and meta["step_count"] == 1
    assert meta["host_state"][0]["mu_product"] == opt._groups[0].host_state["mu_product"]


def test_path_is_used_as_given_and_modes(tmp_path):
    opt = fm.SGD([np.ones(3)], lr=0.1)
    opt.save(tmp_path / "state.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["state.ckpt"]
    assert os.stat(tmp_path / "state.ckpt").st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "state.ckpt", 0o600)
    opt.save(str(tmp_path / "state.ckpt"))
    assert os.stat(tmp_path / "state.ckpt").st_mode & 0o777 == 0o600


def test_cuda_checkpoint_resumes_bit_exactly(tmp_path):
    from numba import cuda

    params, grad = problem(shapes=SHAPES, steps=6)
    a = [cuda.to_device(p) for p in params]
    opt = fm.Adam(a, lr=0.05, amsgrad=True)
    for t in range(3):
        opt.step([cuda.to_device(g) for g in grad([x.copy_to_host() for x in a], t)])
    opt.save(tmp_path / "ck.npz")
    b = [cuda.to_device(np.zeros_like(p)) for p in params]
    resumed = fm.Adam(b, lr=0.05, amsgrad=True)
    resumed.load(tmp_path / "ck.npz")
    for t in range(3, 6):
        for o, ps in ((opt, a), (resumed, b)):
            o.step([cuda.to_device(g) for g in grad([x.copy_to_host() for x in ps], t)])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.copy_to_host(), y.copy_to_host())


# ----------------------------------------------------------------- atomicity
def _big_pair():
    """Two optimizers in different states, big enough that a save takes milliseconds."""
    rng = np.random.default_rng(0)
    out = []
    for steps in (1, 2):
        params = [rng.standard_normal(150_000), rng.standard_normal(1000)]
        opt = fm.Adam(params, lr=0.01)
        for _ in range(steps):
            opt.step([rng.standard_normal(150_000), rng.standard_normal(1000)])
        out.append((opt, params))
    return out


def _read_byte(fd: int, timeout: float = 120.0) -> bytes:
    """One byte from the pipe ``fd`` (the child's report), failing after ``timeout`` s."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"the saving child reported nothing in {timeout} s"
    byte = os.read(fd, 1)
    assert byte, "the saving child died"
    return byte


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_kill_9_while_saving_leaves_old_or_new_checkpoint(tmp_path):
    """A child saves two states in turn and reports each save on a pipe: ``b"s"`` as a
    save starts, ``b"0"`` / ``b"1"`` when the state it wrote is in place. The parent
    waits for a report (no sleep that a slow, fsyncing disk could outlast), then kills
    the child at a random moment within about one save: the file then holds the state
    last reported or the one being written, never a torn file."""
    (a, pa), (b, pb) = _big_pair()
    expected = [snapshot(a, pa), snapshot(b, pb)]
    target = tmp_path / "ck.npz"
    a.save(target)
    times = []
    for _ in range(3):  # how long one save takes on this disk now
        t0 = time.perf_counter()
        a.save(target)
        times.append(time.perf_counter() - t0)
    one_save = sorted(times)[1]
    rng = random.Random(1234)
    seen, interrupted = set(), 0
    # at least 20 kills; more (up to 200) while the kills have not yet hit both states
    # and several writes (a loaded machine may schedule the child late)
    for attempt in range(200):
        if attempt >= 20 and interrupted >= 5 and seen == {0, 1}:
            break
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: save the two states in turn until killed
            try:
                os.close(read_end)
                while True:
                    for k, opt in enumerate((a, b)):
                        os.write(write_end, b"s")
                        opt.save(target)
                        os.write(write_end, b"01"[k:k + 1])
            finally:
                os._exit(1)
        os.close(write_end)
        try:
            # wait until the child has saved state (attempt % 2) and started the next
            # save, then kill it some time within that save
            wanted, last = b"01"[attempt % 2:attempt % 2 + 1], None
            while True:
                byte = _read_byte(read_end)
                if byte != b"s":
                    last = byte
                elif last == wanted:
                    break
            time.sleep(rng.uniform(0.0, one_save))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read_end)
        leftovers = [f for f in os.listdir(tmp_path) if f != "ck.npz"]
        interrupted += bool(leftovers)
        for f in leftovers:  # a killed writer leaves its temporary file behind
            assert f.startswith(".ck.npz.") and f.endswith(".tmp")
            os.unlink(tmp_path / f)
        params = [np.zeros(150_000), np.zeros(1000)]
        fresh = fm.Adam(params, lr=0.5)
        fresh.load(target)  # never torn
        state = snapshot(fresh, params)
        assert state in expected
        seen.add(expected.index(state))
    assert interrupted >= 5  # kills landed in the middle of a write
    assert seen == {0, 1}


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    opt = fm.Adam([np.ones(1000)], lr=0.1)
    target = tmp_path / "ck.npz"
    opt.save(target)
    old = target.read_bytes()
    opt.step([np.ones(1000)])

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        opt.save(target)
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["ck.npz"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fm.Adam([np.ones(10)]).save(tmp_path / "ck.npz")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    tmp = calls[0][1]
    assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".tmp")
    assert calls[1][1:] == (tmp, str(tmp_path / "ck.npz"))
    assert calls[2][1] == str(tmp_path)


# ------------------------------------------------------------- hostile files
class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _valid_entries(tmp_path):
    params, grad = problem(shapes=SHAPES, steps=2)
    opt = fm.Adam([p.copy() for p in params], lr=0.01)
    opt.step(grad(params, 0))
    opt.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as npz:
        return {name: npz[name] for name in npz.files}


def _victim():
    params, grad = problem(shapes=SHAPES, steps=2)
    params = [p * 3 for p in params]
    opt = fm.Adam(params, lr=0.5)
    opt.step(grad(params, 1))
    return opt, params


@pytest.mark.parametrize("where", ["meta", "state.0.exp_avg", "whole file"])
def test_pickled_payload_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = np.array([Payload(marker)], dtype=object)
    path = tmp_path / "evil.npz"
    if where == "whole file":
        np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
        os.replace(tmp_path / "evil.npy", path)
    else:
        entries = _valid_entries(tmp_path)
        entries[where] = evil
        np.savez(path, **entries)
    # the payload is live: loading it with pickle allowed runs it
    loaded = np.load(path, allow_pickle=True)
    if where != "whole file":
        loaded = loaded[where]
    assert marker.exists()
    marker.unlink()
    opt, params = _victim()
    before = snapshot(opt, params)
    with pytest.raises(CheckpointError):
        opt.load(path)
    assert not marker.exists()
    assert snapshot(opt, params) == before


def _write(path, entries):
    np.savez(path, **entries)


def _meta_edit(**changes):
    def edit(entries):
        meta = json.loads(str(entries["meta"]))
        meta.update(changes)
        entries["meta"] = np.array(json.dumps(meta))
        return entries

    return edit


def _replace(name, value):
    def edit(entries):
        entries[name] = value
        return entries

    return edit


def _drop(name):
    def edit(entries):
        del entries[name]
        return entries

    return edit


BAD_FILES = [
    # (id, edit of a valid checkpoint's entries, message fragment)
    ("future version", _meta_edit(format_version=FORMAT_VERSION + 1),
     f"format_version {FORMAT_VERSION + 1} is not supported"),
    ("other class", _meta_edit(optimizer="AdamW"), "saved by 'AdamW'"),
    ("no format tag", _meta_edit(format="something else"), "no format tag"),
    ("negative step", _meta_edit(step_count=-1), "step_count must be an integer"),
    ("float step", _meta_edit(step_count=2.5), "step_count must be an integer"),
    ("bad hyperparameter", _meta_edit(param_groups=[{"lr": -1.0, "betas": [0.9, 0.999],
                                                     "num_params": 4, "numel": 23}]),
     "invalid lr"),
    ("two groups", _meta_edit(state_names=[["exp_avg", "exp_avg_sq"], []]),
     "2 param groups, the optimizer has 1"),
    ("unknown buffer name", _meta_edit(state_names=[["exp_avg", "bogus"]]),
     "unexpected entries"),
    ("missing buffer", _drop("state.0.exp_avg_sq"), "missing entries ['state.0.exp_avg_sq']"),
    ("missing param", _drop("param.2"), "missing entries ['param.2']"),
    ("extra entry", _replace("extra", np.ones(3)), "unexpected entries ['extra']"),
    ("meta not JSON", _replace("meta", np.array("{not json")), "not a readable"),
    ("meta a list", _replace("meta", np.array("[1, 2]")), "no format tag"),
    ("meta bytes", _replace("meta", np.frombuffer(b"{}", dtype=np.uint8)),
     "0-d unicode array"),
    ("state shape", _replace("state.0.exp_avg", np.ones(22)), "shape (22,)"),
    ("state dtype", _replace("state.0.exp_avg", np.ones(23, np.float32)), "dtype float32"),
    ("state too large", _replace("state.0.exp_avg", np.ones(100_000)), "larger than"),
    ("param shape", _replace("param.0", np.ones((4, 3))), "param.0 has shape (4, 3)"),
    ("param dtype", _replace("param.1", np.ones(5, np.float32)), "dtype float32"),
    ("host state text", _meta_edit(host_state=[{"x": "1"}]), "should be a number"),
]


@pytest.mark.parametrize("edit, fragment", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_invalid_checkpoint_is_refused_and_changes_nothing(tmp_path, edit, fragment):
    path = tmp_path / "bad.npz"
    _write(path, edit(_valid_entries(tmp_path)))
    opt, params = _victim()
    before = snapshot(opt, params)
    with pytest.raises(CheckpointError) as info:
        opt.load(path)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
    assert snapshot(opt, params) == before


def _foreign(tmp_path, kind):
    path = tmp_path / "foreign"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("step_count = 5\n")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "npy":
        np.save(tmp_path / "x.npy", np.ones(3))
        os.replace(tmp_path / "x.npy", path)
    elif kind == "other npz":
        with open(path, "wb") as handle:
            np.savez(handle, weights=np.ones(3))
    elif kind == "zip of text":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("meta.npy", "not an array")
    elif kind == "torch file":
        torch = pytest.importorskip("torch")
        torch.save({"state": {}, "param_groups": []}, path)
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "random bytes", "npy", "other npz",
                                  "zip of text", "torch file"])
def test_foreign_file_is_refused(tmp_path, kind):
    path = _foreign(tmp_path, kind)
    opt, params = _victim()
    before = snapshot(opt, params)
    with pytest.raises(CheckpointError):
        opt.load(path)
    assert snapshot(opt, params) == before


def test_every_truncation_is_refused(tmp_path):
    entries = _valid_entries(tmp_path)
    _write(tmp_path / "ck.npz", entries)
    data = (tmp_path / "ck.npz").read_bytes()
    opt, params = _victim()
    before = snapshot(opt, params)
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 60))) | {len(data) - 1})
    for cut in cuts:
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            opt.load(tmp_path / "cut.npz")
    assert snapshot(opt, params) == before


def test_a_flipped_byte_in_any_entry_is_refused(tmp_path):
    _write(tmp_path / "ck.npz", _valid_entries(tmp_path))
    data = (tmp_path / "ck.npz").read_bytes()
    opt, params = _victim()
    before = snapshot(opt, params)
    with zipfile.ZipFile(tmp_path / "ck.npz") as z:
        infos = z.infolist()
    for info in infos:
        # the entry's data starts after its local header (30 bytes + name + extra field)
        name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
        extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30],
                                   "little")
        start = info.header_offset + 30 + name_len + extra_len
        corrupted = bytearray(data)
        corrupted[start + info.compress_size - 3] ^= 0x40  # inside the array's payload
        (tmp_path / "bad.npz").write_bytes(bytes(corrupted))
        with pytest.raises(CheckpointError):
            opt.load(tmp_path / "bad.npz")
    assert snapshot(opt, params) == before


def test_missing_file_is_file_not_found(tmp_path):
    opt, params = _victim()
    with pytest.raises(FileNotFoundError):
        opt.load(tmp_path / "nope.npz")


def test_load_state_dict_refuses_malformed_dicts():
    opt, params = _victim()
    good = opt.state_dict()
    before = snapshot(opt, params)
    bad_dicts = [
        {**good, "param_groups": 3},
        {**good, "state": [["exp_avg"]]},
        {**good, "host_state": [{"mu_product": "1.0"}]},
        {**good, "host_state": [{"x": 1.0}]},
        {**good, "step_count": True},
    ]
    for sd in bad_dicts:
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(sd)
    assert snapshot(opt, params) == before


# --------------------------------------------------------------- torch interop
torch_cases = [c for c in CASES if c[0] in TORCH_HAS]


def _torch_setup(torch, name, kwargs, params):
    tparams = [torch.nn.Parameter(torch.tensor(p.copy())) for p in params]
    groups = [{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.003}]
    return tparams, getattr(torch.optim, name)(groups, foreach=False, **kwargs)


def _torch_step(torch, topt, tparams, grads):
    for tp, g in zip(tparams, grads, strict=True):
        tp.grad = torch.tensor(g)
    topt.step()


@pytest.mark.parametrize("case", torch_cases, ids=case_id)
def test_torch_to_fastmoments_and_on(case, torch64):
    torch = torch64
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=20)
    tparams, topt = _torch_setup(torch, name, kwargs, params)
    for t in range(10):
        _torch_step(torch, topt, tparams, grad([tp.detach().numpy() for tp in tparams], t))
    mine = [tp.detach().numpy().copy() for tp in tparams]
    # other hyperparameters on purpose: they come from torch's param groups
    opt = getattr(fm, name)([{"params": mine[:2]}, {"params": mine[2:]}],
                            **{**kwargs, "lr": 0.9})
    from_torch_state_dict(opt, topt.state_dict())
    assert opt.param_groups[1]["lr"] == 0.003
    for t in range(10, 20):
        _torch_step(torch, topt, tparams, grad([tp.detach().numpy() for tp in tparams], t))
        opt.step(grad(mine, t))
    for x, tp in zip(mine, tparams, strict=True):
        np.testing.assert_allclose(x, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", torch_cases, ids=case_id)
def test_fastmoments_to_torch_and_on(case, torch64):
    torch = torch64
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=20)
    mine = [p.copy() for p in params]
    opt = getattr(fm, name)([{"params": mine[:2]}, {"params": mine[2:], "lr": 0.003}],
                            **kwargs)
    for t in range(10):
        opt.step(grad(mine, t))
    tparams, topt = _torch_setup(torch, name, {**kwargs, "lr": 0.9}, mine)
    sd = to_torch_state_dict(opt)
    topt.load_state_dict(sd)
    assert topt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert topt.param_groups[1]["lr"] == 0.003
    for t in range(10, 20):
        _torch_step(torch, topt, tparams, grad([tp.detach().numpy() for tp in tparams], t))
        opt.step(grad(mine, t))
    for x, tp in zip(mine, tparams, strict=True):
        np.testing.assert_allclose(x, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_exported_state_dict_has_torch_layout_and_survives_torch_save(torch64, tmp_path):
    torch = torch64
    mine = [np.ones((2, 3)), np.ones(4)]
    opt = fm.NAdam(mine, lr=0.01)
    opt.step([np.ones((2, 3)), np.ones(4)])
    sd = to_torch_state_dict(opt)
    tparams = [torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(4))]
    reference = torch.optim.NAdam(tparams, lr=0.01)
    for tp in tparams:
        tp.grad = torch.ones_like(tp)
    reference.step()
    ref_sd = reference.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert set(sd["state"]) == set(ref_sd["state"]) == {0, 1}
    assert set(sd["state"][0]) == set(ref_sd["state"][0])
    assert sd["param_groups"][0].keys() == ref_sd["param_groups"][0].keys()
    assert sd["state"][0]["exp_avg"].shape == (2, 3)
    assert sd["state"][0]["step"].dtype == ref_sd["state"][0]["step"].dtype
    torch.save(sd, tmp_path / "opt.pt")
    again = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = fm.NAdam([np.ones((2, 3)), np.ones(4)], lr=0.5)
    from_torch_state_dict(fresh, again)
    assert snapshot(fresh, mine)["state"] == snapshot(opt, mine)["state"]
    assert fresh._groups[0].host_state == opt._groups[0].host_state


def test_fresh_optimizers_convert_too(torch64):
    torch = torch64
    for name in ("Adam", "SGD", "Adagrad"):
        opt = getattr(fm, name)([np.ones(3)], lr=0.1)
        topt = getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(3))], lr=0.1)
        assert set(to_torch_state_dict(opt)["state"]) == set(topt.state_dict()["state"])
        other = getattr(fm, name)([np.ones(3)], lr=0.5)
        from_torch_state_dict(other, topt.state_dict())
        assert other.step_count == 0 and other.param_groups[0]["lr"] == 0.1


def _refusal(torch):
    """(id, fastmoments optimizer factory, torch state dict factory, exception, fragment)."""

    def trained(name, **kw):
        tp = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        topt = getattr(torch.optim, name)(tp, **kw)
        for p in tp:
            p.grad = torch.ones_like(p)
        topt.step()
        return topt.state_dict()

    def partial():
        sd = trained("Adam")
        del sd["state"][1]
        return sd

    def uneven_steps():
        sd = trained("Adam")
        sd["state"][1]["step"] = torch.tensor(5.0)
        return sd

    def wrong_shape():
        sd = trained("Adam")
        sd["state"][0]["exp_avg"] = torch.zeros(4)
        return sd

    def bad_lr():
        sd = trained("Adam")
        sd["param_groups"][0]["lr"] = -1.0
        return sd

    return [
        ("Yogi", lambda: fm.Yogi([np.ones(3), np.ones(2)]), lambda: trained("Adam"),
         TypeError, "no torch.optim counterpart"),
        ("AdamW state into Adam", lambda: fm.Adam([np.ones(3), np.ones(2)]),
         lambda: trained("AdamW"), ValueError, "decoupled_weight_decay=True"),
        ("Adam state into AdamW", lambda: fm.AdamW([np.ones(3), np.ones(2)]),
         lambda: trained("Adam"), ValueError, "decoupled_weight_decay=False"),
        ("partial state", lambda: fm.Adam([np.ones(3), np.ones(2)]), partial, ValueError,
         "missing, while other parameters have state"),
        ("uneven steps", lambda: fm.Adam([np.ones(3), np.ones(2)]), uneven_steps, ValueError,
         "different step counts"),
        ("wrong shape", lambda: fm.Adam([np.ones(3), np.ones(2)]), wrong_shape, ValueError,
         "has shape (4,)"),
        ("too few params", lambda: fm.Adam([np.ones(3)]), lambda: trained("Adam"), ValueError,
         "has 2 params"),
        ("eps_root", lambda: fm.Adam([np.ones(3), np.ones(2)], eps_root=1e-8),
         lambda: trained("Adam"), ValueError, "eps_root"),
        ("bad lr", lambda: fm.Adam([np.ones(3), np.ones(2)]), bad_lr, ValueError,
         "invalid lr"),
        ("not a dict", lambda: fm.Adam([np.ones(3), np.ones(2)]), lambda: [1, 2], TypeError,
         "expected a torch.optim state_dict"),
    ]


def test_torch_interop_refusals_change_nothing(torch64):
    for case_name, make_opt, make_sd, exc, fragment in _refusal(torch64):
        opt = make_opt()
        params = opt._groups[0].params
        before = snapshot(opt, params)
        with pytest.raises(exc) as info:
            from_torch_state_dict(opt, make_sd())
        assert fragment in str(info.value), case_name
        assert snapshot(opt, params) == before, case_name


def test_export_refuses_what_torch_cannot_express():
    pytest.importorskip("torch")
    with pytest.raises(TypeError, match="no torch.optim counterpart"):
        to_torch_state_dict(fm.Yogi([np.ones(2)]))
    with pytest.raises(ValueError, match="eps_root"):
        to_torch_state_dict(fm.Adam([np.ones(2)], eps_root=1e-6))
    with pytest.raises(ValueError, match="amsgrad_bias_correction"):
        to_torch_state_dict(fm.Adam([np.ones(2)], amsgrad=True, amsgrad_bias_correction=False))
    with pytest.raises(ValueError, match="cautious=True has no torch.optim"):
        to_torch_state_dict(fm.AdamW([np.ones(2)], cautious=True))
