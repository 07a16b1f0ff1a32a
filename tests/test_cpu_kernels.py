"""The decode step's C kernels (handlers/cpu_kernels.c) against the torch ops they replace: float32
to float32's precision, bfloat16 within one rounding; each row's result the same whatever else is in
the call (batched greedy stays equal to unbatched); the build cached and its absence handled. The
kernels in a whole decode step are tested against the model's forward in tests/test_slot_cache.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from handlers import cpu_kernels

DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    # float32: the reduction's order differs from torch's; bfloat16: one rounding instead of several.
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2 ** -6, "rtol": 2 ** -7}


@pytest.fixture
def kernels() -> cpu_kernels.Kernels:
    built = cpu_kernels.load()
    if built is None:
        assert not (shutil.which("cc") or shutil.which("gcc")), "a C compiler is here, yet no kernels: see the log"
        pytest.skip("no C compiler here: the decode step keeps its torch ops")
    return built


def test_a_compiler_on_this_machine_means_the_kernels_are_built():
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here")
    assert cpu_kernels.load() is not None  # CI's machine has one: the kernels must not fall back silently there


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_adds_into_the_residual_and_normalizes_it(kernels, dtype):
    torch.manual_seed(0)
    rows, hidden = 7, 200  # not a multiple of the kernel's 16 lanes
    x = (torch.randn(rows, hidden) * 3).to(dtype)
    delta = torch.randn(rows, 2 * hidden).to(dtype)[:, :hidden]  # a strided view, as a projection's slice would be
    weight = (torch.rand(hidden) + 0.5).to(dtype)
    residual = x + delta
    got_x = x.clone()
    out = kernels.add_rms_norm(got_x, delta, weight, 1e-5)
    assert torch.equal(got_x, residual)  # the residual stream rounds as `x + delta` does
    torch.testing.assert_close(out, F.rms_norm(residual, (hidden,), weight, 1e-5), **tolerance(dtype))
    alone = residual.clone()
    torch.testing.assert_close(kernels.add_rms_norm(alone, None, weight, 1e-5), out, atol=0, rtol=0)
    assert torch.equal(alone, residual)  # no delta: x untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_store_rotates_q_and_k_in_place_and_fills_the_cache_column(kernels, dtype):
    torch.manual_seed(1)
    tokens, heads, kv_heads, dim, running, column = 6, 4, 2, 16, 3, 5
    qkv = torch.randn(tokens, heads + 2 * kv_heads, dim).to(dtype)
    angles = torch.rand(tokens, dim // 2) * 20
    cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)
    keys, values = torch.zeros(8, kv_heads, 10, dim, dtype=dtype), torch.zeros(8, kv_heads, 10, dim, dtype=dtype)

    def rotate_half(t):
        return torch.cat((-t[..., dim // 2:], t[..., :dim // 2]), -1)

    qk = qkv[:, :heads + kv_heads].float()
    expected = qk * cos[:, None].float() + rotate_half(qk) * sin[:, None].float()  # transformers' apply_rotary_pos_emb
    got = qkv.clone()
    kernels.rope_store(got, heads, kv_heads, cos, sin, running, keys[:, :, column], values[:, :, column])
    torch.testing.assert_close(got[:, :heads + kv_heads].float(), expected, **tolerance(dtype))
    assert torch.equal(got[:, heads + kv_heads:], qkv[:, heads + kv_heads:])  # values are not rotated
    assert torch.equal(keys[:running, :, column], got[:running, heads:heads + kv_heads])
    assert torch.equal(values[:running, :, column], qkv[:running, heads + kv_heads:])
    assert not keys[running:].any() and not values[running:].any()  # only the running rows' column
    assert not keys[:, :, :column].any() and not keys[:, :, column + 1:].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_is_swiglus_product_over_the_whole_range(kernels, dtype):
    gate = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([0.0, -0.0, float("inf"), float("nan")])])
    up = torch.linspace(-2, 2, gate.numel())
    got = kernels.silu_mul(torch.cat([gate, up])[None].to(dtype))[0]
    expected = F.silu(gate.to(dtype)).float() * up.to(dtype).float()
    torch.testing.assert_close(got.float(), expected, equal_nan=True, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rows_result_does_not_depend_on_the_other_rows(kernels, dtype):
    """Batched greedy decoding equals unbatched only if a row's arithmetic is its own."""
    torch.manual_seed(2)
    x, delta = torch.randn(32, 576).to(dtype), torch.randn(32, 576).to(dtype)
    weight = torch.rand(576).to(dtype)
    gate_up = torch.randn(32, 2 * 1536).to(dtype)
    batch_x = x.clone()
    batch = kernels.add_rms_norm(batch_x, delta, weight, 1e-6)
    swiglu = kernels.silu_mul(gate_up)
    for r in (0, 13, 31):
        one_x = x[r:r + 1].clone()
        assert torch.equal(kernels.add_rms_norm(one_x, delta[r:r + 1], weight, 1e-6), batch[r:r + 1])
        assert torch.equal(one_x, batch_x[r:r + 1])
        assert torch.equal(kernels.silu_mul(gate_up[r:r + 1].clone()), swiglu[r:r + 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_over_a_cache_window_matches_torchs(kernels, dtype):
    """Grouped-query heads over a window of the cache (a strided view), padded rows masked, against
    the float32 matmuls of fast_decode.MatmulAttention; a row's result independent of the others."""
    from handlers.fast_decode import MatmulAttention

    torch.manual_seed(3)
    rows, heads, kv_heads, dim, cols = 5, 9, 3, 64, 40
    q = torch.randn(rows, heads, dim).to(dtype)
    cache_k, cache_v = torch.randn(8, kv_heads, 60, dim).to(dtype), torch.randn(8, kv_heads, 60, dim).to(dtype)
    keys, values = cache_k[:rows, :, 10:10 + cols], cache_v[:rows, :, 10:10 + cols]
    mask = torch.ones(rows, cols, dtype=torch.long)
    mask[1, :7] = 0
    mask[3, :30] = 0
    torch_way = MatmulAttention()
    for m in (mask, torch.ones_like(mask)):
        expected = torch_way(q, keys, values, torch_way.mask(m), 0.125)
        got = kernels.decode_attention(q, keys, values, None if bool(m.all()) else m.to(torch.uint8), 0.125)
        torch.testing.assert_close(got, expected, **tolerance(dtype))
    batch = kernels.decode_attention(q, keys, values, mask.to(torch.uint8), 0.125)
    for r in range(rows):
        one = kernels.decode_attention(q[r:r + 1], keys[r:r + 1], values[r:r + 1], mask[r:r + 1].to(torch.uint8), 0.125)
        assert torch.equal(one, batch[r:r + 1])
    for h, kvh, d in ((32, 4, 128), (16, 1, 80), (4, 4, 256)):  # the specialised 128, the general path
        q2 = torch.randn(2, h, d).to(dtype)
        k2, v2 = torch.randn(2, kvh, 33, d).to(dtype), torch.randn(2, kvh, 33, d).to(dtype)
        torch.testing.assert_close(kernels.decode_attention(q2, k2, v2, None, d ** -0.5),
                                   torch_way(q2, k2, v2, None, d ** -0.5), **tolerance(dtype))
    narrow = torch.randn(2, 4, 33, 128).to(dtype)[..., :64]  # rows of 128, 64 of them in view
    with pytest.raises(ValueError):
        kernels.decode_attention(torch.randn(2, 4, 128).to(dtype), narrow, narrow, None, 0.125)  # keys narrower than q
    nothing = torch.zeros(rows, cols, dtype=torch.uint8)
    assert not kernels.decode_attention(q, keys, values, nothing, 0.125).any()  # no real column: zeros, not NaN
    with pytest.raises(ValueError):
        kernels.decode_attention(q[..., :24], keys[..., :24], values[..., :24], None, 0.125)  # a head size it does not take
    # The shapes it refuses are those fast_decode never offers it for (one query head per row too many: MAX_GROUP).
    assert kernels.takes_attention(16, 1, 64) and not kernels.takes_attention(17, 1, 64)
    assert not kernels.takes_attention(9, 3, 24) and not kernels.takes_attention(9, 3, 512)
    from handlers.fast_decode import attention_ways

    assert [w.name for w in attention_ways(dtype, 32, 1, 64, kernels)] == ["matmul", "sdpa"]
    assert [w.name for w in attention_ways(torch.float16, 9, 3, 64, kernels)] == ["matmul", "sdpa"]
    assert [w.name for w in attention_ways(dtype, 9, 3, 64, kernels)] == ["matmul", "sdpa", "c"]
    wide = torch.randn(1, 32, 64).to(dtype)
    with pytest.raises(ValueError):
        kernels.decode_attention(wide, keys[:1, :1], values[:1, :1], None, 0.125)  # 32 query heads on one: MAX_GROUP


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_for_every_group_and_window_shape(kernels, dtype):
    """Head sizes 64 and 128 (the register path with AVX-512: 16 columns a block, 1-4 heads'
    accumulators at once) with every group size from 1 to 16, windows shorter than a block, ending
    mid-block and on a block's edge, a whole block of padding, and padding columns holding NaN and
    infinity (never read into a real row's result)."""
    from handlers.fast_decode import MatmulAttention

    torch.manual_seed(5)
    torch_way = MatmulAttention()
    for dim in (64, 128):
        for group in range(1, 17):
            kv_heads = 2 if group < 9 else 1
            for cols in (1, 15, 16, 37):
                rows = 4
                q = torch.randn(rows, group * kv_heads, dim).to(dtype)
                keys, values = (torch.randn(rows, kv_heads, cols, dim).to(dtype) for _ in range(2))
                mask = torch.ones(rows, cols, dtype=torch.long)
                if cols > 1:
                    mask[1, : cols - 1] = 0  # one real column
                    mask[2, : min(cols - 1, 16)] = 0  # a whole block of padding (with 37 columns)
                padding = (mask == 0).unsqueeze(1).unsqueeze(-1).expand_as(keys)
                keys, values = keys.masked_fill(padding, float("nan")), values.masked_fill(padding, float("inf"))
                got = kernels.decode_attention(q, keys, values, mask.to(torch.uint8), dim ** -0.5)
                clean_k, clean_v = keys.masked_fill(padding, 0), values.masked_fill(padding, 0)
                expected = torch_way(q, clean_k, clean_v, torch_way.mask(mask), dim ** -0.5)
                assert not got.isnan().any(), (dim, group, cols)
                shape = f"dim {dim}, group {group}, {cols} columns"
                torch.testing.assert_close(got, expected, **tolerance(dtype), msg=lambda m, shape=shape: f"{shape}: {m}")
                one = kernels.decode_attention(q[2:3], keys[2:3], values[2:3], mask[2:3].to(torch.uint8), dim ** -0.5)
                assert torch.equal(one, got[2:3])


@pytest.mark.parametrize("dim", [64, 80, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rows_attention_does_not_depend_on_its_left_padding(kernels, dtype, dim):
    """The slot cache right-aligns its rows, so a row's left padding is set by the longest row in
    the batch: its result must be the same bits whatever that padding (batched greedy must stay
    unbatched greedy), in the register path (64, 128) and the loops (80)."""
    torch.manual_seed(11)
    length, heads, kv_heads = 45, 9, 3
    q = torch.randn(1, heads, dim).to(dtype)
    k, v = torch.randn(1, kv_heads, length, dim).to(dtype), torch.randn(1, kv_heads, length, dim).to(dtype)
    results = []
    for pad in range(0, 35):
        keys = torch.cat([torch.randn(1, kv_heads, pad, dim).to(dtype), k], dim=2)
        values = torch.cat([torch.randn(1, kv_heads, pad, dim).to(dtype), v], dim=2)
        mask = torch.ones(1, pad + length, dtype=torch.uint8)
        mask[0, :pad] = 0
        results.append(kernels.decode_attention(q, keys, values, mask if pad else None, dim ** -0.5))
    for pad, got in enumerate(results):
        assert torch.equal(got, results[0]), f"{pad} padding columns changed the result"


def test_arguments_the_c_code_cannot_take_are_refused(kernels):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError):
        kernels.add_rms_norm(x, torch.randn(4, 8, dtype=torch.bfloat16), torch.ones(8), 1e-5)  # mixed dtypes
    with pytest.raises(ValueError):
        kernels.add_rms_norm(x, torch.randn(8, 4).t(), torch.ones(8), 1e-5)  # columns not contiguous
    with pytest.raises(KeyError):
        kernels.silu_mul(torch.randn(4, 8, dtype=torch.float16))  # a dtype the C code has no version of


def test_the_build_is_cached_and_no_compiler_means_none(kernels, tmp_path, monkeypatch):
    folder = tmp_path / "k"
    monkeypatch.setenv("LLMHOST_KERNEL_CACHE", str(folder))

    def fresh() -> cpu_kernels.Kernels | None:
        monkeypatch.setattr(cpu_kernels, "_loaded", {})  # as a new process
        return cpu_kernels.load()

    assert fresh() is not None
    built = list(folder.glob("cpu_kernels-*.so"))
    assert len(built) == 1 and len(list(folder.iterdir())) == 1  # no temporary file left
    assert built[0].stat().st_mode & 0o755 == 0o755  # loadable by other users of a shared cache
    stamp = built[0].stat().st_mtime_ns
    assert fresh() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"not a library")
    damaged.replace(built[0])  # a new file: the one this process loaded stays mapped
    # A damaged cache is built again, not given up on (in a new process: this one's dlopen knows the path).
    probe = "from handlers import cpu_kernels; print(cpu_kernels.load() is not None)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent).stdout.strip() == "True"
    assert built[0].stat().st_size > 1000
    compiler = shutil.which("cc") or shutil.which("gcc")
    built[0].unlink()
    monkeypatch.setenv("CC", f"{compiler} -fno-strict-aliasing")  # $CC with words of its own, as make's
    assert fresh() is not None and len(list(folder.glob("cpu_kernels-*.so"))) == 1
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert fresh() is None
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert fresh() is None  # a failed build: the torch ops, not an error
    assert len(list(folder.iterdir())) == 1  # the good build only, no half-written file
    monkeypatch.delenv("CC")
    folder.chmod(0o777)  # anyone could put a library here: not loaded
    assert fresh() is None


def test_the_attention_runs_on_torchs_own_openmp_runtime(kernels):
    """Linked to the libgomp torch loaded, not to a second copy: one thread team for both."""
    runtime = cpu_kernels.openmp_runtime()
    if runtime is None:
        pytest.skip("torch runs on no GNU OpenMP runtime here: the kernels run on one thread")
    assert kernels.openmp
    torch_dir = Path(torch.__file__).resolve().parent
    assert Path(runtime).parent in (torch_dir / "lib", torch_dir.parent / "torch.libs")  # torch's, not another package's
    pytest.importorskip("sklearn")  # a package with a libgomp of its own, loaded after torch's

    assert cpu_kernels.openmp_runtime() == runtime
    built = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
             if Path(line.split()[-1]).name.startswith("cpu_kernels-")]
    assert built and all(name.endswith("-omp.so") for name in built)
