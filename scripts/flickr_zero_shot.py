"""Import the Flickr8k track and print its zero-shot rows (text, visual probe, sum) per split.

    python scripts/flickr_zero_shot.py --data-root ../shared/data/flickr8k --out /tmp/flickr_small --scale small

The data stays outside the repository; --out must be outside it too (runs/ is ignored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fusionguard.recipes.experiment import load_grid, data_config
from fusionguard.training.flickr import import_flickr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", default="full", choices=["small", "full"])
    args = ap.parse_args()
    grid = load_grid(ROOT / "training" / "configs" / "flickr.toml", scale=args.scale)
    t0 = time.perf_counter()
    result = import_flickr(args.data_root, args.out, data_config(grid))
    print(result.summary())
    for split in ("val", "test"):
        s = result.zero_shot[split]
        print(f"{split}: " + json.dumps({m: {k: round(v, 4) for k, v in s[m].items()} for m in ("text", "visual", "sum", "random")}))
        print(f"{split} paired NDCG@10: " + json.dumps(s["paired"]))
    print(f"seconds: {time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
