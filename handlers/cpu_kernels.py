"""Fused kernels for the CPU decode step (``cpu_kernels.c``), built once per machine.

What they replace, at 32 rows of SmolLM2 in bf16 on 2 cores (``torch.profiler`` in a decode step,
AVX512-BF16): RMSNorm ran as eight torch ops (to float32, pow, mean, add, rsqrt, two muls, back to
bf16), 85 µs a call, 61 calls a step; the rotary embedding and the two cache writes as five more ops
a layer; the decode attention as a float32 copy of every row's window of keys and values, two
batched matmuls and a softmax (or ``scaled_dot_product_attention``, whose flash kernel is built for
long queries), ~30 % of the step. Each op pays its dispatch, an allocation and a pass over memory,
and at these sizes that is most of its time. The C kernels: the residual add and the next RMSNorm in
one call (:meth:`Kernels.add_rms_norm`), the rotary embedding of q and k in place and the new keys
and values into the cache in another (:meth:`Kernels.rope_store`), SwiGLU's ``silu(gate) * up`` in
a third (:meth:`Kernels.silu_mul`), and the decode attention reading the cache in its own dtype
(:meth:`Kernels.decode_attention`, on torch's OpenMP threads).

The source is compiled with the system's C compiler (``cc``, or ``$CC``) at ``-O3 -march=native``
the first time a process needs it, into a cache folder keyed by the source, the compiler, this
CPU's flags and torch's OpenMP runtime (``$LLMHOST_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/llm-host/kernels``, else ``~/.cache/llm-host/kernels``; a folder only this user can
write to), and loaded with ctypes (a call releases the GIL). The attention's threads come from the
OpenMP runtime torch loaded (its ``libgomp``): the library is linked to that very file, so the
loader hands it the copy already in the process and both share one thread team (a second OpenMP
runtime would start threads of its own, and two teams on two cores halved the engine's speed
before). Without that runtime the kernels run on one thread. Without a compiler, or where the
build fails, :func:`load` returns None and the decode step keeps its torch ops: the same math,
slower. ``LLMHOST_CPU_KERNELS=false`` turns these off with the prepacked linear layers.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-fno-math-errno")
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "add_rms_norm": ([_P, _P, _P, _P, _I, _I, _I, _I, _I, _F], ctypes.c_int),
    "rope_store": ([_P, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P, _I, _I], None),
    "silu_mul": ([_P, _P, _I, _I, _I, _I], None),
    "decode_attention": ([_P, _I, _I, _I, _I, _I, _I, _P, _I, _I, _P, _I, _I, _I, _P, _I, _F, _P, _I, ctypes.c_int],
                         ctypes.c_int),
}

_lock = threading.Lock()
_loaded: "dict[str, Kernels | None]" = {}


def cache_dir() -> Path:
    if os.environ.get("LLMHOST_KERNEL_CACHE"):
        return Path(os.environ["LLMHOST_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-host" / "kernels"


def load() -> "Kernels | None":
    """The compiled kernels (built on the first call in a process where no cached build fits), or
    None where they cannot be built or loaded here; logged once either way."""
    with _lock:
        if "lib" not in _loaded:
            try:
                _loaded["lib"] = _build()
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the torch ops still work
                log.warning("CPU kernels: not available (%s: %s); the decode step keeps its torch ops",
                            type(exc).__name__, exc)
                _loaded["lib"] = None
        return _loaded["lib"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def openmp_runtime() -> str | None:
    """The GNU OpenMP runtime torch's threads run on: the ``libgomp`` torch ships and loaded (under
    its package folder, or the wheel's ``torch.libs``), or None (torch on another runtime, or none:
    the kernels then run on one thread). Other packages may have loaded copies of their own
    (scikit-learn's ``libgomp-<hash>.so``): linking to one of those would start a second team."""
    own = Path(torch.__file__).resolve().parent
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or not Path(fields[-1]).name.startswith("libgomp"):
                continue
            path = Path(fields[-1])
            if path.parent == own / "lib" or path.parent == own.parent / "torch.libs":
                return str(path)
    except OSError:
        pass
    return None


def _build() -> "Kernels | None":
    # $CC may carry words of its own ("ccache gcc", "gcc -m64"), as make's does.
    compiler = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not compiler:
        log.info("CPU kernels: no C compiler here; the decode step keeps its torch ops")
        return None
    runtime = openmp_runtime()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(compiler).encode(), version.encode(),
                                     " ".join(FLAGS).encode(), _cpu_flags().encode(),
                                     (runtime or "").encode()])).hexdigest()[:16]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        # A library others could have put there would run as this worker: only a folder of our own.
        log.warning("CPU kernels: %s is not a folder only this user can write to; the decode step keeps its "
                    "torch ops (set LLMHOST_KERNEL_CACHE to one)", folder)
        return None
    # OpenMP only with GCC, whose -fopenmp emits the GOMP_* calls libgomp has (clang's emit __kmpc_*).
    gcc = "Free Software Foundation" in version
    for openmp in ([True, False] if runtime and gcc else [False]):
        target = folder / f"cpu_kernels-{key}{'-omp' if openmp else ''}.so"
        for attempt in (1, 2):
            if not target.exists() and not _compile(compiler, target, runtime if openmp else None):
                break  # without OpenMP, or not at all
            try:
                kernels = Kernels(ctypes.CDLL(str(target)), openmp)
            except OSError as exc:
                log.warning("CPU kernels: %s does not load (%s)%s", target, exc,
                            "; building it again" if attempt == 1 else "")
                target.unlink(missing_ok=True)
                continue
            log.info("CPU kernels: %s%s", target, f" (threads: OpenMP, {runtime})" if openmp else "")
            return kernels
    return None


def _compile(compiler: list[str], target: Path, runtime: str | None) -> bool:
    """``runtime``: compile the OpenMP pragmas and link to that runtime file, the one torch loaded
    (its name is the library's dependency, so the loader finds it loaded already: one thread team);
    None: without them."""
    # Built beside the target and renamed into place: workers starting together never load a
    # half-written file (each may build it; the last rename wins, with the same contents).
    fd, tmp = tempfile.mkstemp(prefix="cpu_kernels-building-", suffix=".so", dir=target.parent)
    os.close(fd)
    obj = tmp[:-3] + ".o"
    try:
        if runtime:
            steps = [[*compiler, *FLAGS, "-fopenmp", "-c", "-o", obj, str(SOURCE)],
                     [*compiler, "-shared", "-o", tmp, obj, runtime, f"-Wl,-rpath,{Path(runtime).parent}"]]
        else:
            steps = [[*compiler, *FLAGS, "-shared", "-o", tmp, str(SOURCE)]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                log.warning("CPU kernels: the build failed (%s)%s: %s", " ".join(compiler),
                            "; trying without OpenMP" if runtime else "; the decode step keeps its torch ops",
                            done.stderr.strip()[-2000:])
                return False
        os.chmod(tmp, 0o755)  # mkstemp's 0600, which the linker keeps
        os.replace(tmp, target)
        return True
    finally:
        for leftover in (tmp, obj):
            if os.path.exists(leftover):
                os.unlink(leftover)


class Kernels:
    """The library's calls on torch tensors. Every tensor is on the CPU, in one of :data:`DTYPES`
    (all of a call's in the same one), each row contiguous (stride 1 along the last dimension):
    :meth:`supports` says whether a model's tensors fit; the calls check their arguments (ValueError)."""

    def __init__(self, lib: ctypes.CDLL, openmp: bool = False) -> None:
        self.openmp = openmp  # linked to torch's OpenMP runtime: decode_attention uses torch's threads
        self.calls = {}
        for name, (args, result) in _SIGNATURES.items():
            for suffix in DTYPES.values():
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, result
                self.calls[name, suffix] = fn

    @staticmethod
    def supports(tensors: Iterable[torch.Tensor]) -> bool:
        """The tensors a model's calls pass (its embedding, its norms' weights) fit: all on the CPU, in
        one dtype of :data:`DTYPES`."""
        dtypes = set()
        for t in tensors:
            if not t.is_cpu:
                return False
            dtypes.add(t.dtype)
        return len(dtypes) == 1 and dtypes.pop() in DTYPES

    def add_rms_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> torch.Tensor:
        """``x += delta`` in place (when given), then RMSNorm of ``x`` times ``weight`` into a new
        tensor; ``x`` and ``delta`` [rows, hidden]."""
        rows, n = x.shape
        suffix = DTYPES[x.dtype]
        if delta is None:
            _check(x, weight, weight)
            delta_ptr, delta_stride = None, 0
        else:
            _check(x, delta, weight)
            delta_ptr, delta_stride = delta.data_ptr(), delta.stride(0)
        _require(weight.shape == (n,) and (delta is None or delta.shape == x.shape))
        out = torch.empty((rows, n), dtype=x.dtype)
        if self.calls["add_rms_norm", suffix](x.data_ptr(), delta_ptr, weight.data_ptr(), out.data_ptr(), rows, n,
                                               x.stride(0), delta_stride, n, eps):
            raise MemoryError("add_rms_norm: out of memory")
        return out

    def rope_store(self, qkv: torch.Tensor, heads: int, kv_heads: int, cos: torch.Tensor, sin: torch.Tensor,
                   store: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rotates the query and key heads of ``qkv`` [tokens, heads + 2 * kv_heads, dim] in place
        (cos and sin [tokens, dim]) and copies the first ``store`` tokens' keys and values into
        ``keys`` and ``values`` [rows, kv_heads, dim] (a cache's column: row t gets token t)."""
        tokens, total, dim = qkv.shape
        _require(total == heads + 2 * kv_heads and cos.shape == sin.shape == (tokens, dim) and dim % 2 == 0
                 and qkv.stride(1) == dim and cos.stride(0) == sin.stride(0)
                 and 0 <= store <= min(tokens, keys.shape[0], values.shape[0])
                 and keys.shape[1:] == values.shape[1:] == (kv_heads, dim))
        _check(qkv, cos, sin)
        _check(qkv, keys, values)
        self.calls["rope_store", DTYPES[qkv.dtype]](
            qkv.data_ptr(), tokens, qkv.stride(0), heads + kv_heads, kv_heads, dim, cos.data_ptr(), sin.data_ptr(),
            cos.stride(0), store, keys.data_ptr(), keys.stride(0), keys.stride(1), values.data_ptr(),
            values.stride(0), values.stride(1))

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU's ``silu(gate) * up`` of ``gate_up`` [rows, 2 * n] (gate, then up) as [rows, n]."""
        rows, width = gate_up.shape
        n = width // 2
        _check(gate_up, gate_up, gate_up)
        out = torch.empty((rows, n), dtype=gate_up.dtype)
        self.calls["silu_mul", DTYPES[gate_up.dtype]](gate_up.data_ptr(), out.data_ptr(), rows, n, gate_up.stride(0), n)
        return out

    @staticmethod
    def takes_attention(heads: int, kv_heads: int, dim: int) -> bool:
        """The head shapes the C attention has room for: a head size a multiple of 16 up to 256, at
        most 16 query heads per key/value head (the C code's MAX_GROUP)."""
        return kv_heads > 0 and heads % kv_heads == 0 and heads // kv_heads <= 16 and dim % 16 == 0 and 0 < dim <= 256

    def decode_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
        """One query per row over its window: ``q`` [rows, heads, dim], ``keys`` and ``values`` [rows,
        kv_heads, columns, dim] (views of the cache, each column's ``dim`` contiguous), ``mask``
        [rows, columns] uint8 (1 = a real column) or None; returns [rows, heads * dim]."""
        rows, heads, dim = q.shape
        kv_heads, cols = keys.shape[1], keys.shape[2]
        _check(q, keys, values)
        _require(keys.shape == values.shape and keys.shape[0] == rows and keys.shape[3] == dim and keys.stride(2) == dim
                 and values.stride(2) == dim and self.takes_attention(heads, kv_heads, dim)
                 and (mask is None or (mask.dtype == torch.uint8 and mask.shape == (rows, cols)
                                       and mask.stride(-1) == 1)))
        out = torch.empty((rows, heads * dim), dtype=q.dtype)
        failed = self.calls["decode_attention", DTYPES[q.dtype]](
            q.data_ptr(), rows, heads, kv_heads, dim, q.stride(0), q.stride(1), keys.data_ptr(), keys.stride(0),
            keys.stride(1), values.data_ptr(), values.stride(0), values.stride(1), cols,
            None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0), scale, out.data_ptr(),
            out.stride(0), torch.get_num_threads() if self.openmp else 1)
        if failed:
            raise MemoryError("decode_attention: out of memory") if failed == -1 else ValueError(
                "decode_attention: shapes it cannot take")
        return out


def _check(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> None:
    """The C code reads and writes raw memory: same dtype, CPU, rows contiguous, or no call."""
    _require(a.dtype == b.dtype == c.dtype and a.is_cpu and b.is_cpu and c.is_cpu
             and a.stride(-1) == b.stride(-1) == c.stride(-1) == 1)


def _require(ok: bool) -> None:
    if not ok:  # not an assert: `python -O` must not turn these off
        raise ValueError("CPU kernels: arguments they cannot take")
