"""Let fastmoments update a PyTorch model's tensors in place (CPU, and CUDA when present).

On the CPU, ``p.detach().numpy()`` is a NumPy *view* of a tensor's memory: give
those views to a fastmoments optimizer and every ``opt.step(grads)`` writes the new
values straight into the model (no copies, autograd untouched), with the
gradients read the same way from ``p.grad.numpy()``. The run below trains a small
float64 torch model this way next to a twin trained by ``torch.optim.Adam`` and
prints how far the two trajectories drift apart (round-off: ~1e-16).

On a GPU the same code takes the CUDA tensors themselves: fastmoments accepts any
array exposing ``__cuda_array_interface__`` (torch CUDA tensors, CuPy arrays, numba
device arrays) and launches its CUDA kernels on them. That part runs only when
torch sees a CUDA device (and the CuPy part only when CuPy is installed); otherwise
it prints a note.

Run::

    python examples/torch_interop.py [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import copy

import fastmoments as fm

try:
    import torch
except ImportError:  # the example explains itself and exits
    torch = None


def make_model_and_data(device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    ).to(device=device, dtype=torch.float64)
    X = torch.randn(256, 4, dtype=torch.float64, device=device)
    y = torch.sin(X.sum(dim=1, keepdim=True))
    return model, X, y


def train_twins(model, X, y, params_for_fastmoments, grads_of, steps: int, lr: float = 1e-2):
    """Train ``model`` with fastmoments and a copy with torch.optim.Adam; max |difference|."""
    twin = copy.deepcopy(model)
    opt = fm.Adam(params_for_fastmoments, lr=lr)
    ref = torch.optim.Adam(twin.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()
    for _ in range(steps):
        model.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step(grads_of(model))  # updates model's tensors in place

        ref.zero_grad()
        loss_fn(twin(X), y).backward()
        ref.step()
    with torch.no_grad():
        pairs = zip(model.parameters(), twin.parameters(), strict=True)
        return max(float((p - q).abs().max()) for p, q in pairs)


def cpu_part(steps: int) -> float:
    model, X, y = make_model_and_data("cpu")
    # NumPy views of the parameters: writing into them writes into the model.
    params = [p.detach().numpy() for p in model.parameters()]

    def grads_of(m):  # NumPy views of this step's gradients (no copies)
        return [p.grad.numpy() for p in m.parameters()]

    diff = train_twins(model, X, y, params, grads_of, steps)
    print(f"CPU : {steps} Adam steps on torch tensors through NumPy views; "
          f"max |fastmoments - torch.optim| = {diff:.2e}")
    return diff


def cuda_part(steps: int) -> float | None:
    if not torch.cuda.is_available():
        print("CUDA: no CUDA device visible to torch: the GPU part is skipped (on a GPU "
              "machine it passes the CUDA tensors themselves to fastmoments)")
        return None
    model, X, y = make_model_and_data("cuda")
    # CUDA tensors expose __cuda_array_interface__; detach() shares the memory and
    # drops the autograd link (torch refuses the interface on tensors that need grad).
    params = [p.detach() for p in model.parameters()]

    def grads_of(m):
        return [p.grad for p in m.parameters()]

    # torch and numba both launch on the default CUDA stream here, so the kernels run
    # in order without extra synchronization.
    diff = train_twins(model, X, y, params, grads_of, steps)
    torch.cuda.synchronize()
    print(f"CUDA: {steps} Adam steps on torch CUDA tensors; "
          f"max |fastmoments - torch.optim| = {diff:.2e}")
    try:
        import cupy
    except ImportError:
        print("CUDA: CuPy is not installed: the CuPy part is skipped")
        return diff
    x = cupy.ones(1000, dtype=cupy.float32)
    g = cupy.full(1000, 0.5, dtype=cupy.float32)
    opt = fm.Adam([x], lr=0.1)
    for _ in range(10):
        opt.step([g])
    cupy.cuda.Device().synchronize()
    print(f"CUDA: CuPy array after 10 Adam steps (lr 0.1, constant gradient): "
          f"{float(x[0]):.4f} (expected {1 - 10 * 0.1:.4f})")
    return diff


def main(steps: int = 100, quick: bool = False) -> dict[str, float | None] | None:
    """Run the CPU part (and the CUDA part when a device is present).

    Returns
    -------
    dict or None
        ``{"cpu": max difference, "cuda": max difference or None}``; ``None`` when
        torch is not installed.
    """
    if torch is None:
        print("PyTorch is not installed: nothing to show (pip install torch)")
        return None
    if quick:
        steps = min(steps, 20)
    return {"cpu": cpu_part(steps), "cuda": cuda_part(steps)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a short run (20 steps)")
    cli = parser.parse_args()
    main(cli.steps, cli.quick)
