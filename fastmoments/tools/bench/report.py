"""What a run reports: the table, the JSON document, the targets and the plot.

:func:`render` turns a finished :class:`~.runner.Runner` into the text table (or the
JSON document, ``fastmoments-bench/1``) and checks the project's performance targets
against the rows; :func:`plot` draws GB/s against size per rule with its ceiling.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .cases import RULE_KWARGS


def fmt_threads(threads: int | None, backend: str) -> str:
    """``t2`` (numba threads) or ``b256`` (CUDA threads per block)."""
    return "-" if threads is None else f"{'b' if backend == 'cuda' else 't'}{threads}"


def fmt_size(n: int) -> str:
    """``1e6``, ``5e4`` for round sizes from 1000 on, else the number."""
    if n >= 1000:
        exp = int(math.floor(math.log10(n)))
        mant = n / 10**exp
        if mant == int(mant):
            return f"{int(mant)}e{exp}" if mant != 1 else f"1e{exp}"
    return str(n)


def fmt_time(s: float | None) -> str:
    """Seconds as µs, ms or s, for the tables."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


# --------------------------------------------------------------- targets
def targets(rows: list[dict], first_steps: list[dict]) -> list[dict[str, Any]]:
    """The performance targets of the project, checked against the measured rows."""
    out: list[dict[str, Any]] = []

    def add(name: str, subject: str, value: float | None, threshold: float,
            higher: bool = True) -> None:
        if value is None:
            return
        met = value >= threshold if higher else value <= threshold
        out.append({"target": name, "subject": subject, "value": value,
                    "threshold": threshold, "met": bool(met)})

    for r in rows:
        if r["impl"] != "fastmoments" or r["backend"] != "cpu":
            continue
        star = "" if r.get("single_pass", True) else "*"
        state = r.get("state_dtype")
        if state not in (None, r["dtype"]):  # reduced-precision state: its own targets
            _state_targets(r, add)
            continue
        who = (f"{r['rule']}{star} {r['path']} {fmt_size(r['size'])} {r['dtype']} "
               f"t{r['threads']}")
        if (r["scenario"] == "sizes" and r["path"] == "flat" and r["dtype"] == "float32"
                and r["size"] >= 10**6):
            add("large buffers: >= 0.90 of ceiling", who, r.get("fraction"), 0.90)
            if r["rule"] in ("Adam", "AdamW"):
                add("Adam/AdamW: >= 0.95 of ceiling", who, r.get("fraction"), 0.95)
                add("Adam/AdamW: >= 1.1x torch fused", who, r.get("speedup_vs_torch_fused"),
                    1.1)
        if r["scenario"] == "many":
            need = 5.0 if r["path"] == "list" else 15.0
            add(f"many small arrays ({r['path']}): >= {need:g}x torch fused", who,
                r.get("speedup_vs_torch_fused"), need)
        if r["scenario"] == "tiny":
            add("tiny model: >= 15x torch fused", who, r.get("speedup_vs_torch_fused"), 15.0)
    for f in first_steps:
        who = f"{f['rule']} {f['path']} {fmt_size(f['size'])} {f['dtype']}"
        add("cold first step <= 1 s", who, f["cold_first_step_s"], 1.0, higher=False)
        add("cached first step <= 0.3 s", who, f["cached_first_step_s"], 0.3, higher=False)
        if f.get("cold_no_scipy_s") is not None:  # fastmoments' own dependencies only
            add("cold first step <= 1 s (no SciPy)", who, f["cold_no_scipy_s"], 1.0,
                higher=False)
            add("cached first step <= 0.3 s (no SciPy)", who, f["cached_no_scipy_s"], 0.3,
                higher=False)
    return out


def _state_targets(r: dict, add: Any) -> None:
    """The targets of a row with reduced-precision state (issue 22): float32
    parameters, the flat path, 1e7 elements and more for the fractions, 1e6 and more
    for the time against bitsandbytes."""
    state = r["state_dtype"]
    who = f"{r['rule']} {r['path']} {fmt_size(r['size'])} {state} t{r['threads']}"
    if r["scenario"] != "sizes" or r["path"] != "flat" or r["dtype"] != "float32":
        return
    if r["size"] >= 10**7 and state == "bfloat16":
        add("bfloat16 state: >= 0.90 of its ceiling", who, r.get("fraction"), 0.90)
    if r["size"] >= 10**7 and state == "int8":
        add("int8 state: >= 0.50 of its ceiling", who, r.get("fraction"), 0.50)
    if state == "int8" and r["size"] >= 10**6:
        add("int8 state: >= 5x bitsandbytes 8-bit", who, r.get("speedup_vs_bitsandbytes"),
            5.0)


# ----------------------------------------------------------------- output
def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the results table; the state columns only when
    --state-dtype gave rows with a state dtype, "x bnb" only with bitsandbytes rows,
    "x torchao" only with torchao rows."""
    states = any(r.get("state_dtype") for r in rows)
    bnb = any("speedup_vs_bitsandbytes" in r for r in rows)
    torchao = any("speedup_vs_torchao" in r for r in rows)
    header = ["scenario", "impl", "rule", "path", "arrays", "size", "dtype",
              *(["state"] if states else []), "thr", "traffic", "time/step", "median",
              "GB/s", "of ceil", "x fused",
              *(["B/elem", "state B/p", "ns/elem"] if states else []),
              *(["x bnb"] if bnb else []), *(["x torchao"] if torchao else [])]
    lines = []
    for r in rows:
        rule = (r["rule"] or "-") + ("" if r.get("single_pass", True) else "*")
        lines.append([
            r["scenario"], r["impl"], rule, r["path"], str(r["arrays"]),
            fmt_size(r["size"]), r["dtype"],
            *([r.get("state_dtype") or "-"] if states else []),
            fmt_threads(r["threads"] if r["backend"] == "cpu" else r["block_size"],
                         r["backend"]),
            r["traffic"], fmt_time(r["time_min_s"]), fmt_time(r["time_median_s"]),
            f"{r['gbps']:.2f}", _num(r.get("fraction")), _num(r.get("speedup_vs_torch_fused")),
            *([f"{r['bytes_per_step'] / r['size']:.2f}",
               _num(r.get("state_bytes_per_param"), 3),
               f"{r['time_min_s'] / r['size'] * 1e9:.2f}"] if states else []),
            *([_num(r.get("speedup_vs_bitsandbytes"))] if bnb else []),
            *([_num(r.get("speedup_vs_torchao"))] if torchao else []),
        ])
    return header, lines


def _format_table(rows: list[dict]) -> str:
    header, lines = _table_cells(rows)
    return _columns(header, lines, right_from=4)


def _markdown(rows: list[dict]) -> str:
    """The rows other than the ceilings as a Markdown table, the ceiling's GB/s as a
    column; a column whose cells are all equal becomes a line above the table."""
    rows = [r for r in rows if r["impl"] != "ceiling"]
    if not rows:
        return ""
    header, lines = _table_cells(rows)
    at = header.index("of ceil")
    header.insert(at, "ceiling GB/s")
    for r, cells in zip(rows, lines, strict=True):
        cells.insert(at, _num(r.get("ceiling_gbps")))
    keep = [k for k in range(len(header)) if len({cells[k] for cells in lines}) > 1
            or header[k] in ("impl", "rule", "time/step", "GB/s")]
    same = [f"{header[k]} {lines[0][k]}" for k in range(len(header)) if k not in keep
            and header[k] != "median" and lines[0][k] != "-"]
    out = [f"All rows: {', '.join(same)}.", ""] if same else []
    out.append("| " + " | ".join(header[k] for k in keep) + " |")
    text = ("scenario", "impl", "rule", "path", "dtype", "state", "thr", "traffic")
    out.append("|" + "|".join("---" if header[k] in text else "--:" for k in keep) + "|")
    out += ["| " + " | ".join(cells[k] for k in keep) + " |" for cells in lines]
    return "\n".join(out)


def _columns(header: list[str], lines: list[list[str]], right_from: int) -> str:
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i >= right_from else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _crossover_summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Per (rule, path, dtype, threads): the smallest size from which parallel wins."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["path"], r["dtype"], r["threads"]), []).append(r)
    out = []
    for (rule, path, dtype, threads), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["size"])
        crossover = None
        for i in range(len(rs)):
            if all(r["parallel_min_s"] < r["serial_min_s"] for r in rs[i:]):
                crossover = rs[i]["size"]
                break
        out.append({"rule": rule, "path": path, "dtype": dtype, "threads": threads,
                    "crossover_size": crossover})
    return out


def _block_size_summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Per CUDA fastmoments row measured at several block sizes: the fastest block size and
    each block size's time as a fraction of the fastest (``--block-sizes``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["impl"] == "fastmoments" and r["block_size"] is not None:
            key = (r["scenario"], r["rule"], r["path"], r["size"], r["dtype"])
            groups.setdefault(key, []).append(r)
    out = []
    for (scenario, rule, path, size, dtype), rs in groups.items():
        if len(rs) < 2:
            continue
        best = min(rs, key=lambda r: r["time_min_s"])
        out.append({"scenario": scenario, "rule": rule, "path": path, "size": size,
                    "dtype": dtype, "best_block_size": best["block_size"],
                    "best_gbps": best["gbps"],
                    "speed_vs_best": {r["block_size"]: best["time_min_s"] / r["time_min_s"]
                                      for r in rs}})
    return out


def render(runner: Any, info: dict, as_json: bool,
           as_markdown: bool = False) -> tuple[str, dict]:
    """The text to print (the tables, the JSON document, or with ``as_markdown`` the
    machine and the results as Markdown) and the JSON document of a finished
    :class:`~.runner.Runner` run on the machine described by ``info``."""
    a = runner.args
    checked = targets(runner.rows, runner.first_step_rows)
    summary = _crossover_summary(runner.crossover_rows)
    blocks = _block_size_summary(runner.rows)
    settings = {
        "rules": a.rules, "sizes": a.sizes, "dtypes": a.dtypes, "threads": a.threads,
        "block_sizes": a.block_sizes if a.backend == "cuda" else None,
        "paths": a.paths, "chunk": a.chunk, "budget_s": a.budget, "backend": a.backend,
        "compare": a.compare, "torch_impls": a.torch_impls, "tiny": a.tiny,
        "state_dtypes": getattr(a, "state_dtype", None),
        "many": list(a.many_shape) if a.many else None, "contend": a.contend,
        "rule_kwargs": {r: RULE_KWARGS[r] for r in a.rules if r in RULE_KWARGS},
    }
    doc = {"format": "fastmoments-bench/1", "machine": info, "settings": settings,
           "results": runner.rows, "crossover": runner.crossover_rows,
           "crossover_summary": summary, "block_size_summary": blocks,
           "first_step": runner.first_step_rows,
           "targets": checked, "notes": runner.notes}
    if runner.torch_modules is not None:  # --torch: what fastmoments.tools.torch_bench returned
        doc["torch_modules"] = runner.torch_modules
    if as_json:
        return json.dumps(doc, indent=1), doc
    if as_markdown:
        load = info.get("other_processes_cores")
        head = (f"{info['date'][:16].replace('T', ' ')}, {info['cpu']}, "
                f"{info['usable_cores']} usable cores"
                + ("" if load is None else f" (other processes kept {load:.2f} busy)")
                + f"; fastmoments {info['source'] or info['fastmoments']}, numpy "
                f"{info['numpy']}, numba {info['numba']}, torch {info['torch']}"
                + (f", bitsandbytes {info['bitsandbytes']}" if info.get("bitsandbytes")
                   else "")
                + (f", torchao {info['torchao']}" if "torchao" in a.compare
                   and info.get("torchao") else "") + f"; budget {a.budget} s per row.")
        return "\n".join([head, "", _markdown(runner.rows)]) + "\n", doc
    out = [
        f"fastmoments bench  {info['date']}  backend={a.backend}",
        f"machine: {info['cpu']}, {info['usable_cores']} usable cores "
        f"(numba threads {info['numba_threads']}), {info['platform']}"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"versions: fastmoments {info['fastmoments']} ({info['source'] or 'installed'}), "
        f"numpy {info['numpy']}, numba {info['numba']} "
        f"({info.get('threading_layer') or 'no parallel loop run'} threading layer), "
        f"torch {info['torch']}, python {info['python']}",
        f"parallel_threshold={info['parallel_threshold']}  budget={a.budget}s/row  "
        f"chunk={a.chunk}" + (f"  busy processes={a.contend}" if a.contend else "")
        + ("" if info.get("other_processes_cores") is None else
           f"  other processes: {info['other_processes_cores']:.2f} cores busy on average"),
        "",
    ]
    if runner.rows:
        out += [_format_table(runner.rows)]
        if not all(r.get("single_pass", True) for r in runner.rows):
            out.append("* more than one pass over the buffers (per-tensor reductions); the "
                       "traffic column lists the passes, and the ceiling makes the same passes "
                       "(\"(1new)\": one of the writes goes to a buffer the pass does not read)")
        if any(r.get("state_dtype") for r in runner.rows):
            out.append("traffic \"p4 g4 s2,2\": bytes per element of the parameter, the "
                       "gradient and each state as stored (q: plus a float32 scale per block "
                       "of 256), each read and written once, the parameter and states also "
                       "written; the ceiling moves the same bytes. B/elem: bytes moved per "
                       "element; state B/p: bytes of optimizer state per parameter, from its "
                       "buffers; x bnb: bitsandbytes' 8-bit step time over fastmoments' "
                       "(timed in the same rounds; x torchao: torchao's); their rows' GB/s "
                       "count the bytes a fused step moves")
        out.append("")
    for (size, dtype), copy in runner.copies.items():
        fractions = [r["fraction_of_copy"] for r in runner.rows
                     if r["impl"] == "fastmoments" and r["size"] == size and r["dtype"] == dtype
                     and "fraction_of_copy" in r]
        ceilings = ", ".join(f"{r['traffic']} {fmt_threads(r['block_size'], 'cuda')} "
                             f"{r['fraction_of_copy']:.2f}"
                             for r in runner.ceilings.values()
                             if r["size"] == size and r["dtype"] == dtype)
        out.append(f"device copy {fmt_size(size)} {dtype}: {copy['gbps']:.1f} GB/s (bytes "
                   f"read + written); of it: ceilings {ceilings or '-'}"
                   + (f"; fastmoments rows {min(fractions):.2f}-{max(fractions):.2f}"
                      if fractions else ""))
    if runner.copies:
        out.append("")
    for b in blocks:
        others = ", ".join(f"b{k} {v:.2f}" for k, v in b["speed_vs_best"].items())
        out.append(f"block size {b['rule']} {b['path']} {fmt_size(b['size'])} {b['dtype']}"
                   f"{'' if b['scenario'] == 'sizes' else ' (' + b['scenario'] + ')'}: "
                   f"fastest b{b['best_block_size']} ({b['best_gbps']:.1f} GB/s); speed "
                   f"relative to it: {others}")
    if blocks:
        out.append("")
    if runner.crossover_rows:
        lines = [[r["rule"], r["path"], r["dtype"], str(r["threads"]), fmt_size(r["size"]),
                  str(r["arrays"]), fmt_time(r["serial_min_s"]), fmt_time(r["parallel_min_s"]),
                  f"{r['serial_min_s'] / r['parallel_min_s']:.2f}"]
                 for r in runner.crossover_rows]
        out += ["serial vs parallel (min time per step; ratio > 1: parallel is faster)",
                _columns(["rule", "path", "dtype", "thr", "size", "arrays", "serial",
                          "parallel", "ratio"], lines, right_from=4)]
        for s in summary:
            where = ("none in the measured range" if s["crossover_size"] is None
                     else fmt_size(s["crossover_size"]))
            out.append(f"crossover {s['rule']} {s['path']} {s['dtype']} t{s['threads']}: "
                       f"parallel wins from {where}")
        out.append("")
    if runner.first_step_rows:
        def seconds(x: float | None, digits: int) -> str:
            return "-" if x is None else f"{x:.{digits}f} s"

        lines = [[f["rule"], f["path"], fmt_size(f["size"]), f["dtype"],
                  f"{f['import_s']:.2f} s", f"{f['cold_first_step_s']:.2f} s",
                  f"{f['cached_first_step_s']:.3f} s", seconds(f.get("cold_no_scipy_s"), 2),
                  seconds(f.get("cached_no_scipy_s"), 3), fmt_time(f["second_step_s"]),
                  seconds(f.get("cold_loops_ready_s"), 2)]
                 for f in runner.first_step_rows]
        out += ["first step in a fresh process (cold: empty numba cache; cached: on-disk cache;"
                " no SciPy: the child cannot import SciPy, which numba uses when installed;"
                " cold, all loops: from the first step until the parallel loops compiled in the"
                " background were ready)",
                _columns(["rule", "path", "size", "dtype", "import", "cold 1st", "cached 1st",
                          "cold, no SciPy", "cached, no SciPy", "2nd step", "cold, all loops"],
                         lines, right_from=2), ""]
    if checked:
        out.append("targets")
        for t in checked:
            mark = "met    " if t["met"] else "NOT met"
            out.append(f"  {mark}  {t['target']:<40} {t['subject']:<36} {t['value']:.3g}")
        out.append("")
    if runner.torch_modules is not None:
        table = runner.torch_modules.get("table")
        out += ["torch modules (--torch)",
                table if isinstance(table, str) else json.dumps(runner.torch_modules, indent=1),
                ""]
    for note in runner.notes:
        out.append(f"note: {note}")
    return "\n".join(out).rstrip() + "\n", doc


_COLORS = {"fastmoments": "C0", "torch-fused": "C1", "torch-foreach": "C2",
           "torch-forloop": "C4", "numpy": "C3"}


def plot(doc: dict, filename: str) -> None:
    """GB/s vs size, one panel per rule, the ceiling as a dashed line (``--plot``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if r["scenario"] == "sizes"]
    if not rows:
        raise ValueError("--plot needs rows of the sizes scenario (give --sizes)")
    threads = max((r["threads"] or 0) for r in rows)
    dtype = rows[0]["dtype"]
    rows = [r for r in rows if (r["threads"] or 0) == threads and r["dtype"] == dtype]
    blocks = list(dict.fromkeys(r["block_size"] for r in rows if r["block_size"] is not None))
    block = None
    if blocks:  # CUDA: the rows of one block size (the copy rows have none)
        configured = doc["machine"].get("cuda_threads_per_block")
        block = configured if configured in blocks else blocks[0]
        rows = [r for r in rows if r["block_size"] in (None, block)]
    rules = list(dict.fromkeys(r["rule"] for r in rows if r["rule"]))
    best = {(r["traffic"], r["size"]): r["gbps"] for r in rows if r["impl"] == "ceiling"}
    copies = sorted((r["size"], r["gbps"]) for r in rows if r["impl"] == "device-copy")
    rows = [r for r in rows if r["impl"] != "device-copy"]
    ncols = 2 if len(rules) > 1 else 1
    nrows = math.ceil(len(rules) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.6 * nrows), squeeze=False,
                             sharex=True)
    for ax, rule in zip(axes.flat, rules, strict=False):
        mine = [r for r in rows if r["rule"] == rule]
        ceiling = sorted((size, g) for (t, size), g in best.items() if t == mine[0]["traffic"])
        if ceiling:
            ax.plot(*zip(*ceiling, strict=True), "k--", lw=2, label="ceiling (best in the run)")
        if copies:
            ax.plot(*zip(*copies, strict=True), ":", color="0.5", lw=2, label="device copy")
        for impl, path, state in dict.fromkeys((r["impl"], r["path"], r.get("state_dtype"))
                                               for r in mine):
            pts = sorted((r["size"], r["gbps"]) for r in mine if r["impl"] == impl
                         and r["path"] == path and r.get("state_dtype") == state)
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3,
                    label=f"{impl} ({path}{', ' + state if state else ''})",
                    color=_COLORS.get(impl, "C5"), ls="-" if path == "flat" else ":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        star = "" if mine[0].get("single_pass", True) else ", more than one pass"
        where = (f"GPU, {block} threads per block" if mine[0]["backend"] == "cuda"
                 else f"{threads} threads")
        ax.set_title(f"{rule} ({mine[0]['traffic']}{star}, {dtype}, {where})", fontsize=10)
        ax.set_ylabel("GB/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(rules):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("elements")
    info = doc["machine"]
    machine = (f"GPU {info['gpu']}" if "gpu" in info
               else f"{info['cpu']}, {info['usable_cores']} cores")
    fig.suptitle(f"fastmoments bench, {machine}, {info['date'][:10]}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    fig.savefig(filename, dpi=110)
    plt.close(fig)
