"""Draw the spec's diagrams as hand-written SVG from the reference's own masks and selection.

`python docs/figures/make_figures.py` rewrites docs/assets/figures/*.svg; a docs test checks the
committed files equal what this script draws, so a diagram cannot drift from `nsa_spec`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nsa_spec import NSAConfig
from nsa_spec.blocks import cmp_visible_mask, n_cmp, overlap_matrix
from nsa_spec.reference import selected_mask, top_n, window_mask

OUT = Path(__file__).resolve().parents[1] / "assets" / "figures"
FONT = 'font-family="Helvetica, Arial, sans-serif"'
COLORS = {"cmp": "#3f51b5", "slc": "#e65100", "win": "#2e7d32", "future": "#eeeeee", "past": "#fafafa"}


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{title}">',
            f"<title>{title}</title>",
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def _text(x: float, y: float, s: str, anchor: str = "start", *, size: int = 12, extra: str = "") -> str:
    return f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}" {FONT} font-size="{size}" {extra}>{s}</text>'


def _rect(x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> str:
    return f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}" {extra}/>'


def branches() -> str:
    """The keys of one query in each branch, on a small configuration."""
    cfg = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=4, window=6)
    T, t, cell, x0 = 48, 45, 14, 150
    scores = np.zeros((1, 1, T // cfg.slc_len))
    scores[0, 0, 2] = 1.0  # block 2 wins the one free slot
    idx = top_n(scores, np.array([t]), cfg)
    slc = selected_mask(np.repeat(idx, t + 1, axis=0), T, cfg)[0, t]
    win = window_mask(t + 1, T, cfg)[t]
    visible = cmp_visible_mask(t + 1, n_cmp(T, cfg), cfg)[t]
    body = [_text(x0 + s * cell + cell / 2, 22, str(s), "middle", size=9) for s in range(0, T, 4)]
    body.append(_text(x0 + t * cell + cell / 2, 36, f"query t = {t}", "middle", extra='font-weight="bold"'))
    rows = {"compressed": 50, "selected": 120, "sliding window": 160}
    for label, y in rows.items():
        body.append(_text(x0 - 10, y + 24 if label == "compressed" else y + 14, label, "end"))
    for i in range(n_cmp(T, cfg)):  # compressed tokens: bars over [i*d, i*d + l), two lanes
        y = rows["compressed"] + 6 + (i % 2) * 22
        fill = COLORS["cmp"] if visible[i] else COLORS["future"]
        x = x0 + i * cfg.cmp_stride * cell + 1
        body.append(_rect(x, y, cfg.cmp_len * cell - 2, 16, fill, 'rx="3"'))
    for s in range(T):
        x = x0 + s * cell
        past = COLORS["past"] if s <= t else COLORS["future"]
        body.append(_rect(x + 1, rows["selected"], cell - 2, 20, COLORS["slc"] if slc[s] else past))
        body.append(_rect(x + 1, rows["sliding window"], cell - 2, 20, COLORS["win"] if win[s] else past))
    for j in range(T // cfg.slc_len + 1):  # selection block boundaries
        x = x0 + j * cfg.slc_len * cell
        body.append(f'<line x1="{x}" y1="44" x2="{x}" y2="186" stroke="#9e9e9e" stroke-dasharray="3,3"/>')
        if j < T // cfg.slc_len:
            tag = f"block {j}" + (" (forced)" if j in (0, 4, 5) else " (top score)" if j == 2 else "")
            body.append(_text(x + cfg.slc_len * cell / 2, 206, tag, "middle", size=10))
    xq = x0 + t * cell + cell / 2
    body.append(f'<line x1="{xq}" y1="40" x2="{xq}" y2="186" stroke="black" stroke-width="1.5"/>')
    body.append(
        _text(
            x0, 232,
            f"l = {cfg.cmp_len}, d = {cfg.cmp_stride}, l' = {cfg.slc_len}, n = {cfg.top_n}, "
            f"w = {cfg.window}; grey: not visible to t (future, or compressed block not yet complete)",
        )
    )
    return _svg(x0 + T * cell + 20, 245, body, "Keys visible to one query in each NSA branch")


def selection() -> str:
    """Eq. 9's token overlap against the printed formula, and Eq. 11's top-n with a tie."""
    cfg = NSAConfig()  # l = 32, d = 16, l' = 64: one unit below is d = 16 raw tokens
    j, unit, x0 = 5, 34, 60
    first, last = 4 * j - 6, 4 * j + 5  # compressed tokens drawn
    M = overlap_matrix(last + 1, j + 2, cfg).to_dense()
    origin = first  # unit index drawn at x0
    heading = "Eq. 9, l = 32, d = 16, l' = 64: which compressed tokens score block j = 5"
    body = [_text(x0, 18, heading, extra='font-weight="bold"')]
    for b in (j - 1, j, j + 1):  # selection blocks, 4 units each
        x = x0 + (4 * b - origin) * unit
        fill = "#fff3e0" if b == j else "#f5f5f5"
        body.append(_rect(x + 1, 30, 4 * unit - 2, 24, fill, 'stroke="#bdbdbd"'))
        body.append(_text(x + 2 * unit, 47, f"block {b}: raw [{64 * b}, {64 * b + 64})", "middle"))
    for i in range(first, last + 1):
        x = x0 + (i - origin) * unit + 1
        y = 64 + (i % 2) * 22
        w = M[i, j]
        fill = COLORS["cmp"] if w else "#c5cae9"
        body.append(_rect(x, y, 2 * unit - 2, 16, fill, 'rx="3"'))
        label = f"{i} ×{w:g}" if w else f"{i}"
        body.append(_text(x + unit, y + 12, label, "middle", size=10, extra='fill="white"'))
    body.append(_text(x0 - 8, 90, "overlap", "end"))
    printed = range((64 // 16) * j - 4, (64 // 16) * j + 1)  # tokens 4j-4 .. 4j, weights 1,2,2,2,1
    for k, i in enumerate(printed):
        x = x0 + (i - origin) * unit + 1
        y = 112 + (i % 2) * 22
        weight = (1, 2, 2, 2, 1)[k]
        body.append(_rect(x, y, 2 * unit - 2, 16, "none", 'stroke="#c62828" stroke-dasharray="3,2" rx="3"'))
        body.append(_text(x + unit, y + 12, f"{i} ×{weight}", "middle", size=10, extra='fill="#c62828"'))
    body.append(_text(x0 - 8, 138, "printed", "end", extra='fill="#c62828"'))
    body.append(_text(x0, 172, "Solid: tokens 4j-1 .. 4j+3 overlap block j, weight = overlap / d."))
    body.append(
        _text(x0, 188, "Dashed: the printed formula's tokens 4j-4 .. 4j, l'/d - 1 = 3 tokens earlier.")
    )

    # Eq. 11: forced blocks, free slots, the tie rule.
    top = NSAConfig(top_n=5)
    t = 9 * top.slc_len + 10  # current block c = 9
    scores = np.array([0.02, 0.04, 0.10, 0.03, 0.01, 0.16, 0.10, 0.07, 0.01, 0.04])
    chosen = set(top_n(scores[None, None], np.array([t]), top)[0, 0].tolist())
    if chosen != {0, 2, 5, 8, 9}:
        raise AssertionError(f"the caption describes blocks 0, 2, 5, 8, 9; top_n chose {sorted(chosen)}")
    y0, bar_w, height = 230, 56, 120
    body.append(_text(x0, y0 - 10, "Eq. 11, n = 5, query in block c = 9", extra='font-weight="bold"'))
    for b, s in enumerate(scores):
        x = x0 + b * (bar_w + 8)
        forced = b in (0, 8, 9)
        fill = "#9e9e9e" if forced else COLORS["slc"] if b in chosen else "#ffcc80"
        h = s / scores.max() * height
        body.append(_rect(x, y0 + height - h, bar_w, h, fill))
        body.append(_text(x + bar_w / 2, y0 + height + 14, f"block {b}", "middle", size=10))
        tag = "forced" if forced else "selected" if b in chosen else ""
        body.append(_text(x + bar_w / 2, y0 + height + 28, tag, "middle", size=10))
    body.append(
        _text(
            x0, y0 + height + 52,
            "Blocks 0, c-1 and c are forced; the n - 3 = 2 free slots go to the highest scores among "
            "the others: block 5, then a tie",
        )
    )
    body.append(_text(x0, y0 + height + 68, "between blocks 2 and 6 (0.10) that the lower index, 2, wins."))
    return _svg(x0 + 10 * (bar_w + 8) + 40, y0 + height + 82, body, "Eq. 9 token overlap and Eq. 11 top-n")


FIGURES = {"branches.svg": branches, "selection.svg": selection}


def main() -> None:
    """Write every figure."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        (OUT / name).write_text(draw())


if __name__ == "__main__":
    main()
