"""Linear layers whose fp32 CPU matmuls run through oneDNN instead of the default BLAS.

Why: PyTorch's fp32 `F.linear` on CPU goes to MKL `sgemm`, which on the dev machine (AMD EPYC, Zen 5 with
AVX-512) reaches ~80 GFLOP/s per core, while oneDNN (bundled with PyTorch as "mkldnn") reaches 150-225 (MKL is
known to pick slower code paths on non-Intel CPUs; on Intel CPUs the two are closer, compare with
SHERMAN_ONEDNN=0). Measured on the 2-core dev box, one thread, fp32, same results to ~1e-6 relative
(summation order only):

    shape (rows x in -> out)        MKL F.linear   oneDNN   oneDNN, weight prepacked
    16 x 256 -> 1024 (decode MLP)       101 us       65 us       48 us
    16 x 256 -> 8192 (decode head)      864 us      442 us      289 us
    1024 x 256 -> 1024 (training)      5122 us     2288 us     (forward; both backward GEMMs ~2.2x too)
    1 x 256 -> 256                        4.6 us     14 us       13 us   (oneDNN has ~10 us fixed cost per call)

So `linear()` uses oneDNN when the product is big enough to amortise its fixed cost
(rows * in * out >= `MIN_MACS`), in the forward AND the backward pass (a custom autograd function whose
three GEMMs are all oneDNN calls), and plain `F.linear` otherwise: small products, non-CPU devices,
dtypes other than fp32, autocast, and inside `torch.func` transforms or forward-mode AD (which the
custom function does not implement). Prepacked weights (oneDNN's blocked layout, reordered once) are
used at inference time inside `packed_weights(model)`, which `core/generate.py` enters for each call.

The op is PyTorch's internal `torch.ops.mkldnn._linear_pointwise` (the one Inductor's CPU backend uses);
if it is missing or fails a one-time self-check against `F.linear`, everything falls back to `F.linear`.

Which path wins depends on the machine, not on its vendor: on the AMD EPYC above oneDNN is ~2x MKL, on the Intel
Xeon of issue 20 (DRAM-bound skinny GEMMs, 2 MiB of L2 per core) MKL is as fast or faster for training GEMMs and a
pre-transposed weight (`x @ W^T` stored as (in, out)) is fastest for some decode shapes. So the choice is measured,
once per machine (CPU model + torch build) and cached on disk (`choice_path()`):
  * training (`train`): the oneDNN autograd function vs `F.linear`, forward + backward of a 256 x 256 -> 1024 layer;
  * inference packs (`infer`, per weight shape out x in): prepacked oneDNN vs `F.linear` vs the transposed copy,
    timed at 16 rows (a decode step), the fastest kept. Every candidate computes the same product (results agree
    to fp32 rounding, tests/core/test_fast_paths.py).
Candidates are timed interleaved, best of 5 rounds, in the thread's own CPU time when torch runs one thread (so that
another process taking the core mid-measurement does not count against whichever candidate was running: at the
first version, two processes measuring at once beside a compiler picked oneDNN for training on the Intel Xeon, where
MKL is 1.5x faster at the training shape); oneDNN or the transposed copy must beat `F.linear` by 5% to be chosen. SHERMAN_ONEDNN=0 forces `F.linear` everywhere, SHERMAN_ONEDNN=1 forces oneDNN everywhere (both skip the
measurement, e.g. to compare); unset or "auto" measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.autograd.forward_ad as fwad
import torch.nn as nn
import torch.nn.functional as F

MIN_MACS = 1 << 20
"""Smallest rows * in_features * out_features routed to oneDNN (below it MKL's lower fixed cost wins)."""
PACK_MIN_NUMEL = 1 << 16
"""Smallest weight (elements) that `FusedPack` reorders into oneDNN's blocked layout (~0.1 ms per reorder, each
generate call; smaller weights run unpacked)."""

_STATE: dict = {}
CHOICE_VERSION = 3
"""Bumped when the set of measured candidates or the way they are timed changes: the cache file is named after it, so
cached choices are remeasured (and an older Sherman on the same machine keeps its own file)."""
MARGIN = 0.95
"""A candidate other than `F.linear` is chosen only when its time is below MARGIN x F.linear's."""


def _op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def onednn_available() -> bool:
    """True when the oneDNN linear op exists, is enabled, and agrees with F.linear on a random check."""
    if "ok" not in _STATE:
        ok = os.environ.get("SHERMAN_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()
        if ok:
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = torch.randn(17, 48, generator=g), torch.randn(40, 48, generator=g), torch.randn(40, generator=g)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, 17)
                ref = F.linear(x, w, b)
                ok = bool(torch.allclose(_op(x, w, b), ref, rtol=1e-4, atol=1e-4)) and bool(
                    torch.allclose(_op(x, packed, b), ref, rtol=1e-4, atol=1e-4))
            except (RuntimeError, AttributeError):
                ok = False
        _STATE["ok"] = ok
    return _STATE["ok"]


def _mode_env() -> str:
    v = os.environ.get("SHERMAN_ONEDNN", "auto").strip().lower()
    return {"0": "off", "1": "on"}.get(v, "auto")


def choice_path() -> Path:
    """Where the measured choice is cached: $SHERMAN_CACHE_DIR, else $XDG_CACHE_HOME/sherman, else ~/.cache/sherman."""
    root = os.environ.get("SHERMAN_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sherman")
    return Path(root) / f"linear_choice_v{CHOICE_VERSION}.json"


def machine_key() -> str:
    """CPU model (from /proc/cpuinfo where there is one), core count and torch build: a cached choice is reused only
    on the same kind of machine with the same torch."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} | {os.cpu_count()} cpus | torch {torch.__version__}"


def _clock() -> Callable[[], float]:
    """The timer for candidate measurements: this thread's CPU time when torch computes on one thread (time the OS
    gives another process is not counted), else wall time (CPU time would count every worker thread's spinning)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def _best_of(fns: dict, rounds: int = 5, reps: int = 5) -> dict[str, float]:
    """Interleaved timing: each round runs every candidate `reps` times; the best round per candidate (seconds per call).
    Interleaving, the minimum and `_clock` keep the comparison fair when another process shares the CPU."""
    clock = _clock()
    best = {k: float("inf") for k in fns}
    for f in fns.values():
        f()  # warm-up (oneDNN JIT-compiles its kernel on the first call of a shape)
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = clock()
            for _ in range(reps):
                f()
            best[k] = min(best[k], (clock() - t0) / reps)
    return best


def _pick(times: dict[str, float]) -> str:
    """The fastest candidate; one other than "mkl" (F.linear) only when it beats it by the MARGIN."""
    name = min(times, key=times.get)
    return name if name == "mkl" or times[name] < MARGIN * times["mkl"] else "mkl"


def _load_choice() -> dict:
    """The on-disk cache for this machine ({"train": ..., "infer": {shape: ...}}), or a fresh one."""
    try:
        d = json.loads(choice_path().read_text())
        if isinstance(d, dict) and d.get("machine") == machine_key() and isinstance(d.get("infer"), dict):
            return d
    except (OSError, ValueError):
        pass
    return {"machine": machine_key(), "infer": {}}


def _save_choice(d: dict) -> None:
    """Atomic write (temp file + rename) of `d` merged over what is on disk (another process may have measured other
    shapes meanwhile); an unwritable cache directory only means measuring again next time."""
    disk = _load_choice()
    d["infer"] = {**disk["infer"], **d["infer"]}
    d["infer_torch"] = {**disk.get("infer_torch", {}), **d.get("infer_torch", {})}
    if "train" in disk and "train" not in d:
        d["train"], d["train_us"] = disk["train"], disk.get("train_us")
    try:
        path = choice_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".linear_choice.")
        with os.fdopen(fd, "w") as f:
            json.dump(d, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


_CHOICE_LOCK = threading.Lock()


def _choice() -> dict:
    if "choice" not in _STATE:
        _STATE["choice"] = _load_choice()
    return _STATE["choice"]


def measure_train() -> dict[str, float]:
    """Seconds per forward + backward of a 1000 x 256 -> 1024 layer (an RL update's row count, not a multiple of a
    bucket): the oneDNN autograd function vs F.linear."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 256, generator=g, requires_grad=True)
    w = torch.randn(1024, 256, generator=g, requires_grad=True)
    gy = torch.randn(1000, 1024, generator=g)

    def run(fn):
        return lambda: torch.autograd.grad(fn(x, w, None), (x, w), gy)

    with torch.enable_grad():
        return _best_of({"mkl": run(F.linear), "onednn": run(_OneDNNLinearFn.apply)}, rounds=5, reps=2)


def train_choice() -> str:
    """"onednn" or "mkl" for linears that need gradients (measured once per machine, cached)."""
    mode = _mode_env()
    if mode != "auto" or not onednn_available():
        return "onednn" if mode == "on" and onednn_available() else "mkl"
    c = _choice()
    if c.get("train") not in ("onednn", "mkl"):
        with _CHOICE_LOCK:
            if c.get("train") not in ("onednn", "mkl"):
                times = measure_train()
                c["train"], c["train_us"] = _pick(times), {k: round(v * 1e6, 1) for k, v in times.items()}
                _save_choice(c)
    return c["train"]


COLD_BYTES = 8 << 20
"""`measure_infer` cycles through copies of the weight totalling at least this many bytes, so each product reads its
weight from memory as a decode step does (the layers' weights together exceed the L2 cache), not from L2."""


def measure_infer(out_f: int, in_f: int, rows: int = 16) -> dict[str, float]:
    """Seconds per no-grad product of `rows` x in_f -> out_f for each inference candidate: "mkl" (F.linear),
    "t" (x @ W^T on a transposed copy), "onednn" (prepacked weight, when available), "tiled" (`core/cpu_decode.py`'s
    packed skinny GEMM, when its extension builds). Each call takes the next of several weight copies (`COLD_BYTES`)."""
    from sherman.core import cpu_decode

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_f, generator=g)
    w = torch.randn(out_f, in_f, generator=g)
    copies = max(2, min(64, -(-COLD_BYTES // (w.numel() * 4))))
    ws = [w.clone() for _ in range(copies)]
    turn = [0]

    def cycling(fn, weights):
        def call():
            turn[0] = (turn[0] + 1) % copies
            return fn(weights[turn[0]])
        return call

    fns = {"mkl": cycling(lambda w_: F.linear(x, w_), ws), "t": cycling(lambda w_: torch.mm(x, w_), [w_.t().contiguous() for w_ in ws])}
    if onednn_available():
        fns["onednn"] = cycling(lambda w_: _op(x, w_, None), [torch.ops.mkldnn._reorder_linear_weight(w_, 16) for w_ in ws])
    if cpu_decode.ext() is not None:
        fns["tiled"] = cycling(lambda wp: cpu_decode.tiled_linear(x, wp, None, out_f), [cpu_decode.pack_tiles(w_, None)[0] for w_ in ws])
    reps = max(copies, min(20, int(2e6 // max(rows * in_f * out_f // 16, 1))))  # ~a few ms per round
    with torch.no_grad():
        return _best_of(fns, rounds=5, reps=reps)


def infer_choice(out_f: int, in_f: int) -> str:
    """"onednn", "t", "tiled" or "mkl" for no-grad products with an (out_f, in_f) weight (measured once per shape and
    machine). "tiled" needs the C++ kernels (`core/cpu_decode.py`); where they are disabled (SHERMAN_CPP=0) or do not
    build, the fastest of the other candidates, measured in the same run, is used."""
    from sherman.core import cpu_decode

    mode = _mode_env()
    if mode == "off" or not onednn_available():
        return "mkl"
    if mode == "on":
        return "onednn"
    key = f"{out_f}x{in_f}"
    c = _choice()
    c.setdefault("infer_torch", {})
    if key not in c["infer"] or key not in c["infer_torch"]:
        with _CHOICE_LOCK:
            if key not in c["infer"] or key not in c["infer_torch"]:
                times = measure_infer(out_f, in_f)
                c["infer"][key] = _pick(times)
                c["infer_torch"][key] = _pick({k: v for k, v in times.items() if k != "tiled"})
                _save_choice(c)
    choice = c["infer"][key]
    if choice == "tiled" and cpu_decode.ext() is None:
        return c["infer_torch"][key]
    return choice


def plain_autograd() -> bool:
    """False inside torch.func transforms, autocast or forward-mode AD, which the custom autograd functions of the
    core (`_OneDNNLinearFn`, the RMSNorm backward) do not implement: callers then use the stock ops."""
    return not (torch._C._are_functorch_transforms_active() or torch.is_autocast_enabled("cpu") or fwad._current_level >= 0)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN for this unpacked product: fp32 CPU, big enough, plain autograd, and measured faster on this machine
    (`train_choice` when a gradient is needed, else `infer_choice` of the weight's shape)."""
    if not x.is_cpu or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.numel() // max(x.shape[-1], 1) * weight.numel() < MIN_MACS:
        return False
    if not plain_autograd():
        return False  # torch.func transforms, autocast, forward-mode AD: leave them to F.linear
    if not onednn_available():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return train_choice() == "onednn"
    return infer_choice(weight.shape[0], weight.shape[1]) == "onednn"


def bucket_rows(m: int) -> int:
    """Row count m rounded up to one of 8 sizes per octave (m <= 16 unchanged; at most 1/8 more rows).

    oneDNN JIT-compiles a kernel for every new GEMM shape (~0.1 ms each, measured: ~4 ms per RL step of a tiny model
    when every rollout batch brings new row counts); bucketed row counts repeat, so the kernels are reused. The
    extra rows are zeros and are cut off again: results are the same numbers."""
    if m <= 16:
        return m
    step = 1 << (m.bit_length() - 4)
    return -(-m // step) * step


def _pad_rows(x2: torch.Tensor, rows: int) -> torch.Tensor:
    """(m, k) -> (rows, k), zero rows appended (`cat`: ~1.4x faster than F.pad here)."""
    return x2 if x2.shape[0] == rows else torch.cat([x2, x2.new_zeros(rows - x2.shape[0], x2.shape[1])])


def _op_rows(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """`_op` on x (..., in) with its rows padded to `bucket_rows` -> (..., out)."""
    x2 = x.reshape(-1, x.shape[-1])  # (m, in)
    m = x2.shape[0]
    mp = bucket_rows(m)
    if mp == m:
        return _op(x, w, b)
    y = _op(_pad_rows(x2, mp), w, b)[:m]  # (m, out)
    return y.view(*x.shape[:-1], y.shape[-1])


class _OneDNNLinearFn(torch.autograd.Function):
    """y = x W^T + b with all three GEMMs (y, dL/dx = g W, dL/dW = g^T x) done by oneDNN, rows padded to
    `bucket_rows` (so the weight-gradient GEMM's reduction length is bucketed too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (m, in)
        m = x2.shape[0]
        x2 = _pad_rows(x2.contiguous(), bucket_rows(m))  # (mp, in)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.m, ctx.x_shape = bias is not None, m, x.shape
        y = _op(x2, weight, bias)[:m]  # (m, out)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x2, weight = ctx.saved_tensors  # (mp, in), (out, in)
        gx = gw = gb = None
        m = ctx.m
        g2 = g.reshape(-1, g.shape[-1])  # (m, out)
        gp = _pad_rows(g2.contiguous(), x2.shape[0])  # (mp, out); contiguous: oneDNN is very slow on zero strides
        if ctx.needs_input_grad[0]:
            gx = _op(gp, weight.t(), None)[:m].view(ctx.x_shape)  # (..., in) = g @ W
        if ctx.needs_input_grad[1]:
            if weight.shape[0] <= weight.shape[1]:
                gw = _op(gp.t(), x2.t(), None)  # (out, in) = g^T x
            else:  # oneDNN is faster with the smaller dimension as the output rows: (x^T g)^T
                gw = _op(x2.t(), gp.t(), None).t().contiguous()  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, packed: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through oneDNN where that is faster (see the module docstring).

    packed: weight in oneDNN's prepacked layout (`torch.ops.mkldnn._reorder_linear_weight`), used only when
    no gradient is needed.
    """
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if 0 in x.stride():  # expanded (broadcast) input: oneDNN is very slow on zero strides
        x = x.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinearFn.apply(x, weight, bias)
    return _op_rows(x, weight if packed is None else packed, bias)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def fuse_for_training(linears: list[nn.Linear], x: torch.Tensor) -> bool:
    """True when `fused_linears` should run these layers: a gradient is being recorded (inference has `FusedPack`),
    CPU, and no module hooks on the layers (their own forward would not be called)."""
    return torch.is_grad_enabled() and x.is_cpu and not any(_hooked(m) for m in linears)


def fused_linears(linears: list[nn.Linear], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """y_i = x W_i^T + b_i for layers that read the same x (q/k/v, gate/up), as ONE product with the concatenated
    weight; autograd splits the gradient back onto each weight through `cat`. One GEMM instead of several in the
    forward pass and in each backward product (dL/dx summed inside the GEMM): measured on the 2-core Xeon, forward +
    backward of q/k/v at 1100 x 256 rows 10-15% less time, at 700 x 64 (the RL stress size) ~45% less. The same
    product as the separate layers up to fp32 summation order."""
    return fused_linear(linears, x).split([m.out_features for m in linears], dim=-1)


def fused_linear(linears: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """`fused_linears` before the split: (..., sum out_i), the outputs side by side."""
    w = torch.cat([m.weight for m in linears])  # (sum out, in)
    if all(m.bias is None for m in linears):
        b = None
    else:
        b = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
    return linear(x, w, b)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose forward is `linear()` above.

    Inside `packed_weights(model)` it also holds an inference copy of its weight (`FusedPack`: prepacked for oneDNN
    or transposed, whichever `infer_choice` measured fastest), used for no-grad calls while the weight is unchanged
    (same tensor, same version counter).
    """

    _pack: FusedPack | None = None

    def pack_for_inference(self) -> list[nn.Module]:
        if self._pack is None or not self._pack.fresh():
            self._pack = FusedPack.build([self])
        return [self]

    def unpack_for_inference(self) -> None:
        self._pack = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack = self._pack
        if pack is not None and pack.usable(x):
            return pack.fused(x)
        return linear(x, self.weight, self.bias)


class FusedPack:
    """One inference copy of the row-concatenation of several Linear layers that read the same input (q/k/v, or
    gate/up of a SwiGLU), so inference does one GEMM instead of several. Its layout is the one `infer_choice` measured
    fastest for that shape on this machine: "onednn" (oneDNN's blocked layout, reordered once), "t" (the transposed
    (in, sum out) copy, `x @ W^T`) or "mkl" (the plain concatenation through `F.linear`). Valid while none of the
    source weights changes (tensor identity and version counter)."""

    def __init__(self, linears: list[nn.Linear], packed: torch.Tensor | None, plain: torch.Tensor | None, bias: torch.Tensor | None,
                 wt: torch.Tensor | None = None, tiles: tuple[torch.Tensor, torch.Tensor | None] | None = None):  # fmt: skip
        self.linears, self.bias = linears, bias
        self.tiles = tiles  # (column tiles, padded bias) for `cpu_decode.tiled_linear`, or None
        self.packed = packed  # oneDNN-reordered (sum out, in) concatenation, or None
        self.plain = plain  # the plain concatenation (sum out, in), when neither reordered nor transposed
        self.wt = wt  # the transposed concatenation (in, sum out), contiguous, or None
        self.sources = [m.weight for m in linears] + [m.bias for m in linears if m.bias is not None]
        self.versions = [t._version for t in self.sources]
        self.splits = [m.out_features for m in linears]
        self.macs_per_row = sum(m.weight.numel() for m in linears)

    @property
    def layout(self) -> str:
        return "onednn" if self.packed is not None else "t" if self.wt is not None else "tiled" if self.tiles is not None else "mkl"

    def fresh(self) -> bool:
        """True while every source weight/bias is unchanged in place (version counter; this is called per
        forward, so it is kept cheap: parameters re-assigned to new tensors are not detected, pack again)."""
        return [t._version for t in self.sources] == self.versions

    @classmethod
    def build(cls, linears: list[nn.Linear]) -> FusedPack | None:
        w0 = linears[0].weight
        if w0.device.type != "cpu" or w0.dtype != torch.float32:
            return None
        with torch.no_grad():
            w = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else w0.detach()  # (sum out, in)
            biases = [m.bias for m in linears]
            if all(b is None for b in biases):
                bias = None
            else:
                bias = torch.cat([b.detach() if b is not None else torch.zeros(m.out_features) for b, m in zip(biases, linears)])
            how = infer_choice(w.shape[0], w.shape[1])
            if how == "onednn" and w.numel() >= PACK_MIN_NUMEL:  # small weights: the reorder costs more than it saves
                return cls(linears, torch.ops.mkldnn._reorder_linear_weight(w, 16), None, bias)
            if how == "t":
                return cls(linears, None, None, bias, w.t().contiguous())
            if how == "tiled":
                from sherman.core import cpu_decode

                return cls(linears, None, None, bias, tiles=cpu_decode.pack_tiles(w, bias))
            return cls(linears, None, w, bias)

    def usable(self, x: torch.Tensor) -> bool:
        """True when this pack may serve x: no gradient needed, fp32 CPU, weights unchanged, and either an unreordered
        layout or a product big enough for the prepacked oneDNN weight (else the layers run one by one on
        their own weights: no extra copy of large weights is kept for small batches)."""
        if torch.is_grad_enabled() or x.dtype != torch.float32 or not x.is_cpu or not self.fresh():
            return False
        return self.packed is None or x.numel() // max(x.shape[-1], 1) * self.macs_per_row >= MIN_MACS

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> the concatenated outputs (..., sum out_i) in one GEMM (call when `usable`): on the prepacked
        oneDNN weight, on the transposed copy, or `linear()` on the plain concatenated weight."""
        if self.packed is not None:
            return _op_rows(x, self.packed, self.bias)
        if self.tiles is not None:
            from sherman.core import cpu_decode

            return cpu_decode.tiled_linear(x, self.tiles[0], self.tiles[1], sum(self.splits))
        if self.wt is not None:
            x2 = x.reshape(-1, x.shape[-1])  # (m, in)
            y = torch.mm(x2, self.wt) if self.bias is None else torch.addmm(self.bias, x2, self.wt)  # (m, out)
            return y.view(*x.shape[:-1], y.shape[-1])
        return linear(x, self.plain, self.bias)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., in) -> one output (..., out_i) per source layer."""
        return self.fused(x).split(self.splits, dim=-1)


_PACK_LOCK = threading.Lock()


def _pack_all(model: nn.Module) -> None:
    """Build every inference pack of `model` (parents first: a fused pack covers its layers) and list them."""
    covered: set[int] = set()  # layers already inside a fused pack (parents come first in modules())
    for m in model.modules():
        if hasattr(m, "pack_for_inference") and id(m) not in covered:
            covered.update(id(x) for x in m.pack_for_inference() or ())
    model.__dict__["_packs"] = [v for m in model.modules() for v in vars(m).values() if isinstance(v, FusedPack)]


def _unpack_all(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "unpack_for_inference"):
            m.unpack_for_inference()
    model.__dict__.pop("_packs", None)


def _acquire(model: nn.Module) -> None:
    """One more open `packed_weights` count on `model`: the first packs; a later one rebuilds the packs when a weight
    changed since they were built (while a long-lived holder, `hold_packs`, kept them open), else reuses them."""
    with _PACK_LOCK:
        depth = model.__dict__.get("_pack_depth", 0)
        model.__dict__["_pack_depth"] = depth + 1
        if depth == 0:
            _pack_all(model)
        elif not all(p.fresh() for p in model.__dict__.get("_packs", ())):
            _unpack_all(model)
            _pack_all(model)


def _release(model: nn.Module) -> None:
    with _PACK_LOCK:
        model.__dict__["_pack_depth"] -= 1
        if model.__dict__["_pack_depth"] == 0:
            _unpack_all(model)


def hold_packs(model: nn.Module) -> Callable[[], None]:
    """Keep `model`'s inference packs built across many short `packed_weights` contexts (a step-wise decoder enters
    one per step, in whichever worker thread runs it: the C++ kernels' inference flag is per thread) -> release(),
    idempotent. Without a holder every step would pack and unpack the weights again (a few ms each); with one, a step
    reuses them, and the first step after a weight update rebuilds them (`_acquire`). No inference context is
    entered here."""
    _acquire(model)
    done = [False]

    def release() -> None:
        if not done[0]:
            done[0] = True
            _release(model)

    return release


@contextlib.contextmanager
def packed_weights(model: nn.Module):
    """Prepack, for fast inference, every module of `model` that defines `pack_for_inference` (our `Linear`,
    fused q/k/v and gate/up projections, the LM head); unpack on exit. Re-entrant and thread-safe: a count of
    open contexts per model, the first one packs and the last one unpacks; a nested entry after the weights changed
    rebuilds the packs. Costs one reorder of the weights (a few ms for a 10M-parameter model); packs made stale by
    weights changing inside are ignored. Inside, the calling thread is also in `cpu_decode.inference()` (C++ kernels
    for the small ops of a decode step, where they build)."""
    _acquire(model)
    from sherman.core import cpu_decode

    try:
        # this thread's fp32 no-grad RMSNorm, q/k norm + RoPE, decode attention and sampling use the C++ kernels
        # (loaded, on a machine's first use compiled, here; unless SHERMAN_CPP=0)
        w = next(model.parameters(), None)
        with cpu_decode.inference(enable=w is not None and w.device.type == "cpu" and w.dtype == torch.float32):
            yield model
    finally:
        _release(model)
