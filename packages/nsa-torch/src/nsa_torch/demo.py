"""`python -m nsa_torch.demo`: what an NSA layer reads, on the CPU, in under two minutes.

1. Runs an `NSAAttention` layer over a synthetic sequence of a few thousand tokens built from
   recurring "topics" (each token is its segment's topic vector plus noise), with the query and
   key projections tied and a long RoPE base so that, untrained, content rather than distance
   drives the scores. Draws, per query position and key block, the blocks the selected branch
   picked (forced ones apart), the sliding window's extent and the compressed branch's coverage,
   and writes the figure to `--out` (default demo-out/selection.png).
2. Prints the tokens one decode step reads against dense attention at cache lengths 1k..64k,
   measured by real decode steps of a layer with the paper's block sizes (`NSACache.reads`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from nsa_spec import NSAConfig
from nsa_spec.blocks import n_cmp_visible
from nsa_spec.counters import dense_tokens_read, tokens_read_exact, tokens_read_table4

from nsa_torch.cache import NSACache
from nsa_torch.module import NSAAttention
from nsa_torch.ops.compress import cmp_blocks

DEMO_CONFIG = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=8, window=256)


def topic_sequence(tokens: int, d_model: int, n_topics: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """x [1, T, d_model]: segments of 64..320 tokens of recurring topics; and each token's topic."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, d_model))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    labels = np.empty(tokens, dtype=np.int64)
    t = 0
    while t < tokens:
        length = int(rng.integers(64, 320))
        labels[t : t + length] = rng.integers(n_topics)
        t += length
    x = 3.0 * topics[labels] + 0.5 * rng.standard_normal((tokens, d_model)) / np.sqrt(d_model)
    return torch.from_numpy(x).float()[None], labels


def demo_layer(d_model: int) -> NSAAttention:
    """A layer whose query and key projections are tied, so similar tokens score high."""
    layer = NSAAttention(
        d_model, num_heads=4, num_kv_heads=1, head_dim=32, config=DEMO_CONFIG, phi="mean",
        rope_base=1e7, backend="torch",
    )
    with torch.no_grad():
        w = layer.q_proj.weight.view(4, 32, d_model)
        for branch in ("cmp", "slc"):
            layer.k_proj[branch].weight.copy_(w[0])
        w.copy_(w[:1].expand_as(w))
    return layer


def branch_maps(indices: np.ndarray, tokens: int, config: NSAConfig) -> dict[str, np.ndarray]:
    """Per (query, key block): selected (1 by score, 2 forced), window overlap, compressed coverage."""
    l_slc = config.slc_len
    n_blocks = -(-tokens // l_slc)
    t = np.arange(tokens)[:, None]
    j = np.arange(n_blocks)[None, :]
    c = t // l_slc
    selected = np.zeros((tokens, n_blocks))
    rows, slots = np.nonzero(indices >= 0)
    selected[rows, indices[rows, slots]] = 1
    forced = (j == 0) | (j == c) | (j == c - 1)
    selected[(selected > 0) & forced] = 2
    lo, hi = j * l_slc, np.minimum((j + 1) * l_slc, tokens)
    window = np.clip(np.minimum(hi, t + 1) - np.maximum(lo, t - config.window + 1), 0, None) / l_slc
    visible = n_cmp_visible(t, config)
    covered_end = np.where(visible > 0, (visible - 1) * config.cmp_stride + config.cmp_len, 0)
    compressed = np.clip(covered_end - lo, 0, l_slc) / l_slc
    return {"selected": selected, "window": window, "compressed": compressed}


def plot_selection(maps: dict[str, np.ndarray], labels: np.ndarray, config: NSAConfig, out: Path) -> None:
    """Three panels (selected, window, compressed) over query position x key block, topic strips on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    tokens, n_blocks = maps["selected"].shape
    block_topic = labels[:: config.slc_len]
    topic_cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(
        2, 3, figsize=(16, 9.5), sharex="col",
        gridspec_kw={"height_ratios": [1, 24], "hspace": 0.03, "wspace": 0.32},
    )
    panels = [
        ("selected", "Selected branch: top-n blocks", ListedColormap(["white", "#1f5fbf", "#f28e2b"]), 0, 2),
        ("window", f"Sliding branch: window w={config.window}", plt.get_cmap("Greens"), 0, 1),
        ("compressed", "Compressed branch: block coverage", plt.get_cmap("Purples"), 0, 1),
    ]
    extent = (-0.5, n_blocks - 0.5, tokens - 0.5, -0.5)
    for col, (key, title, cmap, vmin, vmax) in enumerate(panels):
        strip, ax = axes[0, col], axes[1, col]
        strip.imshow(block_topic[None, :], cmap=topic_cmap, vmin=0, vmax=10, aspect="auto",
                     interpolation="nearest", extent=(-0.5, n_blocks - 0.5, 0, 1))
        strip.set_yticks([])
        strip.set_title(title, fontsize=12)
        image = ax.imshow(maps[key], cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                          interpolation="nearest", extent=extent)
        ax.set_xlabel(f"key block j (l'={config.slc_len} tokens each)")
        if col == 0:
            query_strip = ax.inset_axes((1.015, 0, 0.04, 1))
            query_strip.imshow(labels[:, None], cmap=topic_cmap, vmin=0, vmax=10, aspect="auto",
                               interpolation="nearest", extent=(0, 1, tokens - 0.5, -0.5))
            query_strip.set_xticks([])
            query_strip.set_yticks([])
            query_strip.set_xlabel("topic", fontsize=9)
            ax.set_ylabel("query position t")
            strip.set_ylabel("topic", rotation=0, ha="right", va="center")
            handles = [
                plt.Rectangle((0, 0), 1, 1, color="#1f5fbf", label="chosen by score"),
                plt.Rectangle((0, 0), 1, 1, color="#f28e2b", label="forced (0, c-1, c)"),
            ]
            ax.legend(handles=handles, loc="lower left", fontsize=10, framealpha=0.9)
        else:
            fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02,
                         label="fraction of the block's tokens read")
    fig.suptitle(
        f"NSA: which key blocks each query reads (T={tokens}, l={config.cmp_len}, d={config.cmp_stride}, "
        f"l'={config.slc_len}, n={config.top_n}, w={config.window})\nstrips: topic of each key block (top) "
        "and of each query (right of the first panel)",
        fontsize=13,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def topic_agreement(indices: np.ndarray, labels: np.ndarray, config: NSAConfig) -> tuple[float, float]:
    """How often a block chosen by score (not forced) starts with the query's topic, and how often
    any block the query could have chosen does (the chance level)."""
    t = np.arange(len(labels))[:, None]
    block_topic = labels[:: config.slc_len]
    free = (indices >= 1) & (indices < t // config.slc_len - 1)
    chosen = block_topic[np.where(free, indices, 0)] == labels[:, None]
    j = np.arange(len(block_topic))[None, :]
    candidate = (j >= 1) & (j < t // config.slc_len - 1)
    same = block_topic[None, :] == labels[:, None]
    return float(chosen[free].mean()), float(same[candidate].mean())


def decode_reads(length: int, config: NSAConfig, seed: int) -> int:
    """Tokens one real decode step reads at cache length `length` (cache of random streams)."""
    torch.manual_seed(seed)
    layer = NSAAttention(32, num_heads=2, num_kv_heads=1, head_dim=16, config=config, phi="mean")
    cache = NSACache()
    with torch.no_grad():
        k_raw, v_raw, k_slc, v_slc, k_win, v_win = (torch.randn(1, length - 1, 1, 16) for _ in range(6))
        k_cmp = layer.phi_k(cmp_blocks(k_raw, config))
        v_cmp = layer.phi_v(cmp_blocks(v_raw, config))
        cache.fill(k_raw, v_raw, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, config)
        layer(torch.randn(1, 1, 32), cache=cache)
    return int(cache.reads[0, 0])


def main(argv: list[str] | None = None) -> None:
    """Write the selection figure and print the decode read table (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Draw NSA's block selection and count decode reads.")
    parser.add_argument("--out", type=Path, default=Path("demo-out/selection.png"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    x, labels = topic_sequence(args.tokens, 64, n_topics=6, seed=args.seed)
    layer = demo_layer(64)
    with torch.no_grad():
        _, aux = layer(x, return_aux=True)
    indices = aux.indices[0, :, 0].numpy()
    plot_selection(branch_maps(indices, args.tokens, DEMO_CONFIG), labels, DEMO_CONFIG, args.out)
    same_topic, baseline = topic_agreement(indices, labels, DEMO_CONFIG)
    print(f"wrote {args.out}: {args.tokens} queries; {same_topic:.0%} of the blocks chosen by score "
          f"share the query's topic (of all the blocks they could choose, {baseline:.0%} do)")

    config = NSAConfig()
    print(f"\nTokens read per decode step, measured (paper block sizes: l={config.cmp_len}, "
          f"d={config.cmp_stride}, l'={config.slc_len}, n={config.top_n}, w={config.window})")
    print(f"{'S':>7} {'dense':>7} {'NSA measured':>13} {'exact formula':>14} {'Table 4':>8} {'speedup':>8}")
    for length in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
        measured = decode_reads(length, config, args.seed)
        dense = dense_tokens_read(length)
        print(f"{length:>7} {dense:>7} {measured:>13} {tokens_read_exact(length, config):>14} "
              f"{tokens_read_table4(length, config):>8} {dense / measured:>7.1f}x")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
