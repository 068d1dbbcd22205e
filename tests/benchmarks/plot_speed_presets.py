"""Draws the speed presets' cost in quality as an SVG, from bench_speed_presets JSON files:
expert FLOPs saved against `quality` (x) and the mean PSNR of each video against its `quality`
twin (y); the threshold sweep as a line per file, the presets as squares, the targets as grey
guides. Points whose evaluation failed a `paris eval` threshold are drawn hollow.

    python -m tests.benchmarks.plot_speed_presets docs/speed-presets-50.json docs/speed-presets-20.json \
        --out docs/speed-presets.svg
"""

import argparse
import json
from html import escape
from pathlib import Path

from tests.benchmarks.bench_speed_presets import PSNR_CAP_DB, TARGETS

W, H, M = 760, 460, 64  # size and margin, px
COLOURS = ["#3c6ec8", "#c85028", "#2a9a5a", "#8a4ab0"]


def points(result: dict) -> tuple[list, list]:
    """(sweep points, preset points) of one benchmark result, each (x, y, label, eval passed)."""
    steps = result["steps"]
    curve = [(p["flops_ratio"], p["psnr_vs_quality_db"]["mean"], f"{p['threshold']:g}:{p['max_reuse']}", p["eval_passed"])
             for p in result.get("sweep", {}).get("points", [])]
    presets = [(r["flops_ratio"], r["psnr_vs_quality_db"]["mean"], f"{name} ({steps} steps)", r["eval"]["passed"])
               for name, r in result["presets"].items() if name != "quality"]
    return curve, presets


def svg(results: list[dict]) -> str:
    series = [points(r) for r in results]
    everything = [p for curve, presets in series for p in curve + presets]
    xs = [p[0] for p in everything] + [1.0] + [t["flops_ratio"] for t in TARGETS.values()]
    ys = [min(p[1], PSNR_CAP_DB) for p in everything] + [t["psnr_db"] for t in TARGETS.values()]
    x0, x1 = 1.0, max(xs) * 1.08
    y0, y1 = min(ys) - 3, max(ys) + 3

    def at(x, y):
        return M + (x - x0) / (x1 - x0) * (W - 2 * M), H - M - (min(y, PSNR_CAP_DB) - y0) / (y1 - y0) * (H - 2 * M)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<rect x="{M}" y="{M}" width="{W - 2 * M}" height="{H - 2 * M}" fill="none" stroke="black"/>']

    def text(x, y, s, fill="black", anchor="start"):
        out.append(f'<text x="{x:.1f}" y="{y:.1f}" fill="{fill}" text-anchor="{anchor}">{escape(s)}</text>')

    for vx in range(1, int(x1) + 1):  # ticks: every 1x, every 5 dB
        text(at(vx, y0)[0], H - M + 16, f"{vx}x", anchor="middle")
    for vy in range(int(y0 // 5 + 1) * 5, int(y1) + 1, 5):
        text(M - 6, at(x0, vy)[1] + 4, f"{vy} dB", anchor="end")
    for name, t in TARGETS.items():  # a target is met up and to the right of its corner
        tx, ty = at(t["flops_ratio"], t["psnr_db"])
        out.append(f'<path d="M{tx:.1f},{M} V{ty:.1f} H{W - M}" fill="none" stroke="#b0b0b0" stroke-dasharray="4 3"/>')
        text(tx + 4, ty - 4, f"{name} target", fill="#808080")
    for (curve, presets), result, colour in zip(series, results, COLOURS):
        if curve:
            path = " ".join(f"{'M' if i == 0 else 'L'}{at(x, y)[0]:.1f},{at(x, y)[1]:.1f}"
                            for i, (x, y, _, _) in enumerate(curve))
            out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            for x, y, label, passed in curve:
                px, py = at(x, y)
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" stroke="{colour}" '
                           f'fill="{colour if passed else "white"}"/>')
                text(px + 5, py - 5, label, fill=colour)
        for x, y, label, passed in presets:
            px, py = at(x, y)
            out.append(f'<rect x="{px - 5:.1f}" y="{py - 5:.1f}" width="10" height="10" stroke="{colour}" '
                       f'fill="{colour if passed else "white"}"/>')
            text(px + 8, py + 12, label, fill=colour)
    text(M, 20, f"{results[0]['model']}: expert FLOPs saved against quality (x), mean PSNR to the quality video (y)")
    text(M, 36, "squares: presets; line: fast preset, cache threshold:max reuse swept (labels); "
                "hollow: a paris eval threshold failed")
    text(W / 2, H - 18, "expert FLOPs per video, quality / preset", anchor="middle")
    for i, (result, colour) in enumerate(zip(results, COLOURS)):  # legend: one line per file
        parts = (["presets"] if len(result["presets"]) > 1 else []) + (["sweep"] if result.get("sweep") else [])
        text(W - M - 4, M + 16 + 14 * i, f"{result['steps']} steps: {' and '.join(parts)}", fill=colour, anchor="end")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="bench_speed_presets JSON files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg([json.loads(p.read_text()) for p in args.results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
