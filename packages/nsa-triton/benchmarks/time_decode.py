"""Decode-step times of backend "triton" (`nsa_triton.ops.decode`) beside cuDNN dense decode, on a GPU.

Paper shape: bf16, HQ=64, H=4, dk=dv=128, l=32, d=16, l'=64, n=16, w=512; caches in layout v2
holding S tokens per sequence (capacity S), S = 8k..128k, batch 1, 16, 64. Per case: our step
eager and replayed from a CUDA graph, dense decode (torch SDPA, cuDNN backend, native GQA) of one
query over a [B, H, S, d] KV cache, all in the same run, and the device-to-device copy bandwidth
measured once at the start. Achieved TB/s is the bytes of the rows the step reports it read
(`reads` * (dk + dv) * 2) over its time. Before timing, at the smallest S, the bf16 step is
compared with the same step on float32 copies (o's relative error, share of equal indices).
With `--variants`, work splits (`DecodeTiles`: programs per launch, rows per split at least,
warps, the select fused into the selected branch) are timed first at S = 64k, batch 1 and 16,
graph-captured. Times are `triton.testing.do_bench` medians on random inputs. Prints one table.

    python packages/nsa-triton/benchmarks/time_decode.py [S ...] [--batch 1 16 64] [--variants]
"""

from __future__ import annotations

import argparse

import torch
import triton
from nsa_spec import NSAConfig
from nsa_spec.blocks import n_cmp
from nsa_triton.ops.decode import DecodeTiles, decode_attention

CFG = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
HQ, H, D = 64, 4, 128
DTYPE = torch.bfloat16
COPY_BYTES = 4 << 30  # buffer of the copy-bandwidth measurement
PROFILED = (65536, 16)  # the (S, B) whose per-kernel device times are listed
PROFILE_REPS = 20
VARIANTS = [*(DecodeTiles(programs=p, split_keys=k, num_warps=w) for p in (132, 264, 528, 1056)
              for k in (64, 128, 256) for w in (4, 8) if w == 4 or (p, k) == (264, 128)),
            *(DecodeTiles(num_warps=w, fuse_select=True) for w in (4, 8))]
VARIANT_CASES = ((65536, 1), (65536, 16))


def make_step(B: int, S: int, dtype: torch.dtype = DTYPE, tiles: DecodeTiles | None = None):
    """A v2 cache of B sequences holding S tokens each, and the step over it."""
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype)

    N = n_cmp(S, CFG)
    q, gates = r(B, HQ, D), torch.sigmoid(r(B, HQ, 3).float()).to(dtype)
    cache = (r(B, N, H, D), r(B, N, H, D), r(B, S, H, D), r(B, S, H, D), r(B, CFG.window, H, D),
             r(B, CFG.window, H, D))
    lengths = torch.full((B,), S, dtype=torch.int64, device="cuda")
    scale = CFG.softmax_scale(D)

    def step():
        return decode_attention(q, gates, *cache, lengths, CFG, scale, tiles)

    return step, (q, gates, cache, lengths)


def check_against_float32(S: int) -> str:
    """o's relative error and the share of equal indices of the bf16 step against float32 copies."""
    step, (q, gates, cache, lengths) = make_step(4, S)
    o, _, idx, _ = step()
    o32, _, idx32, _ = decode_attention(q.float(), gates.float(), *(x.float() for x in cache), lengths, CFG,
                                        CFG.softmax_scale(D))
    err = ((o.float() - o32).norm() / o32.norm()).item()
    same = (idx == idx32).float().mean().item()
    return f"check at S={S}, B=4: bf16 vs float32 step: o rel. error {err:.2e}, equal indices {same:.1%}"


def graph_of(step):
    """`step` captured in a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def dense_decode(B: int, S: int):
    """SDPA with the cuDNN backend over [B, H, S, d] keys/values, native GQA; None if refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q = torch.randn(B, HQ, 1, D, device="cuda", dtype=DTYPE)
    k, v = (torch.randn(B, H, S, D, device="cuda", dtype=DTYPE) for _ in range(2))

    def run():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa(q, k, v, enable_gqa=True)

    try:
        run()
    except RuntimeError as exc:
        return None, str(exc).strip().splitlines()[0][:100]
    return run, None


def kernel_times(step) -> dict[str, float]:
    """Mean device time per step of each kernel (us), from the torch profiler."""
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILE_REPS):
            step()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / PROFILE_REPS for e in prof.key_averages() if e.device_time_total}


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (TB/s)."""
    a = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e12


def variant_rows() -> list[str]:
    """Graph-captured step times of each work split in VARIANTS at VARIANT_CASES."""
    rows = [f"{'S':>7} {'B':>3} {'programs':>8} {'rows':>5} {'warps':>5} {'fused':>5} {'graph us':>9}"]
    for S, B in VARIANT_CASES:
        for tiles in VARIANTS:
            step, inputs = make_step(B, S, tiles=tiles)
            graph = graph_of(step)
            us = triton.testing.do_bench(graph.replay, return_mode="median") * 1e3
            rows.append(f"{S:>7} {B:>3} {tiles.programs:>8} {tiles.split_keys:>5} {tiles.num_warps:>5} "
                        f"{tiles.fuse_select!s:>5} {us:>9.1f}")
            print(rows[-1], flush=True)
            del step, inputs, graph
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("S", type=int, nargs="*", default=[8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--variants", action="store_true")
    a = parser.parse_args()
    name = torch.cuda.get_device_name()
    copy = copy_bandwidth()
    lines = [f"{name}, torch {torch.__version__}, triton {triton.__version__}; "
             f"device-to-device copy {copy:.2f} TB/s (read + write)", check_against_float32(min(a.S))]
    if a.variants:
        lines += ["work splits (DecodeTiles):", *variant_rows()]
    header = (f"{'S':>7} {'B':>3} {'dense us':>9} {'eager us':>9} {'graph us':>9} {'x dense':>8} "
              f"{'reads/seq':>10} {'MB read':>8} {'TB/s':>6} {'% copy':>7}")
    rows = []
    for S in a.S:
        for B in a.batch:
            step, inputs = make_step(B, S)
            reads = step()[3]
            bytes_read = reads.sum().item() * 2 * D * DTYPE.itemsize
            eager = triton.testing.do_bench(step, return_mode="median") * 1e3
            graph = graph_of(step)
            captured = triton.testing.do_bench(graph.replay, return_mode="median") * 1e3
            if (S, B) == PROFILED:
                kernels = ", ".join(f"{k} {v:.1f}" for k, v in kernel_times(step).items())
                lines.append(f"kernel us at S={S}, B={B} (profiler, eager): {kernels}")
            del step, inputs, graph
            torch.cuda.empty_cache()
            run, refused = dense_decode(B, S)
            dense = triton.testing.do_bench(run, return_mode="median") * 1e3 if run else float("nan")
            del run
            torch.cuda.empty_cache()
            tbs = bytes_read / (captured * 1e-6) / 1e12
            rows.append(f"{S:>7} {B:>3} {dense:>9.1f} {eager:>9.1f} {captured:>9.1f} "
                        f"{dense / captured:>8.2f} {reads.sum().item() // (B * H):>10} "
                        f"{bytes_read / 1e6:>8.1f} {tbs:>6.2f} {100 * tbs / copy:>6.1f}%"
                        + (f"  dense refused: {refused}" if refused else ""))
            print(rows[-1], flush=True)
    print("\n".join(["", *lines, header, *rows]))


if __name__ == "__main__":
    main()
