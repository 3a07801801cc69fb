"""Frozen latency tables for the search-quality benchmark: measured on this host once, then read back.

`frozen_lut(space, device)` returns {block key: median ms} for every block the space can contain at
its options, from `benchmarks/results/search_quality/luts/<device>__<space>.csv` when that file
exists (committed with the benchmark, so every run and every machine searches the same problem), and
otherwise measures the missing blocks on this host with the device's own backend (torch eager on one
thread for `host-cpu-torch`, ONNX Runtime for `host-cpu-onnxruntime`; 2 warm-up runs and 5 timed
repeats, the median kept: enough to rank blocks, which is what a search needs) and writes the file.
`frozen_macs(space)` does the same for the MACs of every block (`macs__<space>.json`; delete it after
a change to MAC counting).

    python benchmarks/_frozen_luts.py            # measure and store the tables the benchmark uses
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from latency_lut import MemoryLatencyTable, measure_missing
from latency_lut.io import export_table, import_table
from search_spaces import SearchSpace, count_macs, get_space

LUT_DIR = Path(__file__).parent / "results" / "search_quality" / "luts"
WARMUP, REPEATS = 2, 5
#: The spaces and options the benchmark searches (docs/benchmarks.md says why these sizes).
BENCH_SPACES: dict[str, dict[str, object]] = {
    "efficientformerv2": {"resolution": 224},
    "unet": {"latent_size": 16, "width_scale": 0.25},
    "temporal": {"frames": 16, "latent_size": 16, "width_scale": 0.25},
}
DEVICES = ("host-cpu-torch", "host-cpu-onnxruntime")


def lut_path(space: SearchSpace, device: str) -> Path:
    return LUT_DIR / f"{device}__{space.name}.csv"


def frozen_lut(space: SearchSpace, device: str) -> dict[str, float]:
    """Median ms per block key of `space` on `device` (read from the frozen file, or measured once)."""
    path = lut_path(space, device)
    table = MemoryLatencyTable()
    if path.exists():
        import_table(table, path, device=device)
    keys = [spec.key for spec in space.all_blocks()]
    if table.missing(device, keys):
        start = time.perf_counter()
        report = measure_missing(space, device, table, warmup=WARMUP, repeats=REPEATS)
        print(
            f"measured {report.measured} blocks of {space.name} on {device} in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        export_table(table, device, path)
    snapshot = table.snapshot(device)
    return {key: float(snapshot[key]) for key in keys}


def frozen_macs(space: SearchSpace) -> dict[str, int]:
    """MACs per block key of every block `space` can contain (read from the frozen file, or counted)."""
    path = LUT_DIR / f"macs__{space.name}.json"
    macs: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    specs = space.all_blocks()
    missing = [spec for spec in specs if spec.key not in macs]
    if missing:
        start = time.perf_counter()
        for spec in missing:
            macs[spec.key] = count_macs(*space.build_block(spec))
        print(f"counted MACs of {len(missing)} blocks of {space.name} in {time.perf_counter() - start:.0f} s")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(macs.items())), indent=0))
    return {spec.key: int(macs[spec.key]) for spec in specs}


def main() -> int:
    for device in DEVICES:
        for name, options in BENCH_SPACES.items():
            lut = frozen_lut(get_space(name, **options), device)
            print(f"{device} {name}: {len(lut)} blocks, {sum(lut.values()):.1f} ms in all", flush=True)
    for name, options in BENCH_SPACES.items():
        frozen_macs(get_space(name, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
