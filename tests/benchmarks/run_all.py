"""Runs every benchmark (each a script printing JSON), prints the merged JSON, and writes
docs/benchmarks.json and the plot docs/benchmarks.png. `make bench`."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

BENCHES = ["tests.benchmarks.bench_generate", "tests.benchmarks.bench_engine", "tests.benchmarks.bench_api"]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def plot(results: dict, path: Path) -> None:
    """Bars: measured ratio against its target, one pair per goal."""
    engine = results.get("tests.benchmarks.bench_engine", {})
    bars = []
    if "throughput" in engine:
        t = engine["throughput"]
        bars.append(("throughput x (>= 3)", t["ratio"], t["target_ratio"]))
        bars.append(("forwards alone x", t["model_forward_seconds"]["ratio"], t["target_ratio"]))
        bars.append(("one expert, best case x", t["one_expert_best_case_ratio"], t["target_ratio"]))
    if "expert_loads_one_expert_budget" in engine:
        e = engine["expert_loads_one_expert_budget"]
        longest = max((k for k in e if k.startswith("max_wait_")), key=lambda k: int(k.split("_")[-1]))
        bars.append(("loads, wait 24 (<= 0.25)", e["max_wait_24"]["ratio"], e["target_ratio"]))
        bars.append((f"loads, wait {longest.split('_')[-1]}", e[longest]["ratio"], e["target_ratio"]))
    if "engine_overhead_batch1" in engine:
        o = engine["engine_overhead_batch1"]
        bars.append(("overhead share (<= 0.15)", o["share_of_tick"], o["target"]))
    width, height, top = 200 * len(bars), 320, max([max(v, t) for _, v, t in bars] + [1]) * 1.15
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    slot = width // max(len(bars), 1)
    for i, (label, value, target) in enumerate(bars):
        x = i * slot + 40
        for j, (v, colour) in enumerate(((value, (60, 110, 200)), (target, (200, 200, 200)))):
            h = int((height - 60) * v / top)
            draw.rectangle([x + j * 60, height - 40 - h, x + j * 60 + 50, height - 40], fill=colour)
            draw.text((x + j * 60, height - 55 - h), f"{v:g}", fill="black")
        draw.text((x, height - 30), label, fill="black")
    draw.text((10, 10), "measured (blue) vs target (grey)", fill="black")
    img.save(path)


def main() -> int:
    results, failed = {}, []
    for name in BENCHES:
        proc = subprocess.run([sys.executable, "-m", name, *sys.argv[1:]], capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            results[name] = {"error": proc.stderr[-2000:]}
            continue
        results[name] = json.loads(proc.stdout)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, DOCS / "benchmarks.png")
    print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
