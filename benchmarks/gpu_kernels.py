"""FlashMLA decode over KV pages loaded from py3fs, and DeepGEMM on a py3fs checkpoint.

    python benchmarks/gpu_kernels.py [--layers 61] [--batch 8] [--context 2048]
                                     [--steps 20] [--json OUT]

Needs a CUDA GPU with FlashMLA and DeepGEMM importable (scripts/gpu_kernels.sh
builds them and runs this). Starts a local py3fs cluster in a temporary directory
(3 storage targets, 3 replicas), then:

1. writes `batch` sequences of `context` tokens of DeepSeek V3 MLA latents
   (61 layers x 64 tokens x 576 dims x bf16 = 4,497,408 bytes a page) into a
   `KVCacheStore`, and times loading every page back into a CUDA paged cache
   (`plugins.flash_mla.paged.load_prefix`: py3fs -> pinned host -> GPU);
2. checks the loaded cache bit for bit, and FlashMLA's output on it against the
   PyTorch reference;
3. times decode steps: one query token per sequence, 128 heads, FlashMLA over
   every layer; tokens/s = batch x steps / time (attention only), beside the
   reference on the same GPU;
4. saves FP8 block-scaled weights with `CheckpointManager`, times loading them
   onto the GPU, and times DeepGEMM's `fp8_gemm_nt` beside the reference GEMM,
   with its relative error against the float32 product.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import uvloop

from client import Client, ClientConfig
from kv_cache.checkpoint import CheckpointManager
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore
from plugins import deep_gemm, flash_mla
from plugins.deep_gemm import reference as gemm_reference
from plugins.deep_gemm.weights import Fp8Linear, load_fp8_linears
from plugins.flash_mla import paged
from plugins.flash_mla import reference as mla_reference
from py3fs.cluster import ClusterSpec, LocalCluster

HEADS, DV = 128, 512


def _sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _decode_rate(
    cache: paged.PagedKVCache, seqs: list[int], q: torch.Tensor, steps: int, fn: Any
) -> float:
    """Seconds per decode step (all layers) of `fn`, after one warm-up step."""
    table, lens = cache.block_table(seqs), cache.cache_seqlens(seqs)
    meta, splits = flash_mla.get_mla_metadata(lens, HEADS, 1)

    def step() -> None:
        for layer in range(cache.num_layers):
            if fn is mla_reference.flash_mla_with_kvcache:
                fn(q, cache.layer(layer), table, lens, DV)
            else:
                fn(q, cache.layer(layer), table, lens, DV, meta, splits)

    step()
    start = _sync_time()
    for _ in range(steps):
        step()
    return (_sync_time() - start) / steps


async def mla_run(mgmt: list[str], args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    pages_per_seq = args.context // paged.BLOCK_SIZE
    page_bytes = paged.page_nbytes(args.layers)
    total_pages = args.batch * pages_per_seq
    async with Client(ClientConfig(mgmt=mgmt, max_inflight=64)) as fs:
        store = await KVCacheStore(fs, "gpu-bench", page_bytes, batch=16).open()
        src = paged.PagedKVCache(total_pages, args.layers)
        seqs_src, tokens = [], []
        put_s = 0.0
        for _ in range(args.batch):
            t = torch.randint(0, 100_000, (args.context,), generator=gen).tolist()
            lat = torch.randn(
                args.layers, args.context, paged.LATENT_DIM, generator=gen
            )
            s = src.new_sequence()
            src.append(s, lat.to(torch.bfloat16))
            start = time.perf_counter()
            assert await paged.save_prefix(src, store, s, page_keys(t)) == pages_per_seq
            put_s += time.perf_counter() - start
            seqs_src.append(s)
            tokens.append(t)

        cache = paged.PagedKVCache(total_pages, args.layers, device="cuda")
        seqs = [cache.new_sequence() for _ in range(args.batch)]
        start = _sync_time()
        for s, t in zip(seqs, tokens, strict=True):
            assert (
                await paged.load_prefix(cache, store, s, page_keys(t)) == args.context
            )
        load_s = _sync_time() - start
        exact = all(
            cache.gather(s).cpu().equal(src.gather(s0))
            for s, s0 in zip(seqs, seqs_src, strict=True)
        )

    q = torch.randn(args.batch, 1, HEADS, paged.LATENT_DIM, generator=gen)
    q = q.to(torch.bfloat16).cuda()
    table, lens = cache.block_table(seqs), cache.cache_seqlens(seqs)
    meta, splits = flash_mla.get_mla_metadata(lens, HEADS, 1)
    out, _ = flash_mla.flash_mla_with_kvcache(
        q, cache.layer(0), table, lens, DV, meta, splits
    )
    want, _ = mla_reference.flash_mla_with_kvcache(q, cache.layer(0), table, lens, DV)
    err = (out.float() - want.float()).abs().max().item()

    kernel_step = _decode_rate(
        cache, seqs, q, args.steps, flash_mla.flash_mla_with_kvcache
    )
    ref_step = _decode_rate(
        cache, seqs, q, max(1, args.steps // 10), mla_reference.flash_mla_with_kvcache
    )
    nbytes = total_pages * page_bytes
    return {
        "layers": args.layers,
        "batch": args.batch,
        "context_tokens": args.context,
        "pages": total_pages,
        "page_bytes": page_bytes,
        "put_s": put_s,
        "put_GB_s": nbytes / put_s / 1e9,
        "page_load_s": load_s,
        "page_load_GB_s": nbytes / load_s / 1e9,
        "page_load_ms_per_page": load_s / total_pages * 1000,
        "loaded_bit_exact": exact,
        "flash_mla_max_abs_err_vs_reference": err,
        "decode_step_ms": kernel_step * 1000,
        "decode_tokens_per_s": args.batch / kernel_step,
        "reference_decode_step_ms": ref_step * 1000,
        "reference_decode_tokens_per_s": args.batch / ref_step,
        "kernel_speedup_vs_reference": ref_step / kernel_step,
    }


async def gemm_run(mgmt: list[str], args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    n, k, m = 4096, 7168, args.gemm_m
    weights = {
        f"model.layers.{i}.mlp.gate_proj": torch.randn(n, k, generator=gen)
        for i in range(args.gemm_layers)
    }
    state: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        state.update(Fp8Linear.quantize(w).state_dict(name))
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    async with Client(ClientConfig(mgmt=mgmt, max_inflight=64)) as fs:
        ckpt = CheckpointManager(fs, "/ckpt-gpu-bench", keep_last=1)
        start = time.perf_counter()
        path = await ckpt.save(1, state)
        save_s = time.perf_counter() - start
        start = _sync_time()
        layers = await load_fp8_linears(fs, path, device="cuda")
        load_s = _sync_time() - start

    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    name, w = next(iter(weights.items()))
    layer = layers[name]
    got = layer(x)
    want = x.float() @ w.cuda().T
    rel = float((got.double() - want.double()).norm() / want.double().norm())

    def timed(fn: Any, reps: int) -> float:
        fn()
        start = _sync_time()
        for _ in range(reps):
            fn()
        return (_sync_time() - start) / reps

    kernel_s = timed(lambda: layer(x), 20)
    ref_s = timed(lambda: layer(x, gemm=gemm_reference.fp8_gemm_nt), 3)
    flops = 2 * m * n * k
    return {
        "m": m,
        "n": n,
        "k": k,
        "checkpoint_bytes": nbytes,
        "checkpoint_save_s": save_s,
        "checkpoint_load_s": load_s,
        "checkpoint_load_GB_s": nbytes / load_s / 1e9,
        "rel_err_vs_float32": rel,
        "deep_gemm_ms": kernel_s * 1000,
        "deep_gemm_TFLOPS": flops / kernel_s / 1e12,
        "reference_ms": ref_s * 1000,
        "reference_TFLOPS": flops / ref_s / 1e12,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=61)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=2048, help="tokens a sequence")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gemm-m", type=int, default=4096)
    ap.add_argument("--gemm-layers", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument(
        "--parts", default="mla,gemm", help="which of mla,gemm to run (comma list)"
    )
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    if args.context % paged.BLOCK_SIZE:
        ap.error("--context must be a multiple of 64")
    parts = set(args.parts.split(","))
    if ("mla" in parts and flash_mla.BACKEND != "flash_mla") or (
        "gemm" in parts and deep_gemm.BACKEND != "deep_gemm"
    ):
        raise SystemExit(
            f"needs the kernels: flash_mla {flash_mla.BACKEND}, "
            f"deep_gemm {deep_gemm.BACKEND}"
        )
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "replicas": args.replicas,
    }

    with tempfile.TemporaryDirectory(prefix="py3fs-gpubench-") as tmp:
        spec = ClusterSpec(
            data_dir=Path(tmp) / "cluster", fsync=False, replicas=args.replicas
        )
        cluster = LocalCluster(spec)
        cluster.up()
        try:
            for part, key, run in (
                ("mla", "flash_mla", mla_run),
                ("gemm", "deep_gemm", gemm_run),
            ):
                if part in parts:
                    result[key] = uvloop.run(run(cluster.mgmt_addresses, args))
                    # Written after each part, so a crash later keeps it.
                    print(json.dumps({key: result[key]}, indent=1), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        finally:
            cluster.down()


if __name__ == "__main__":
    main()
