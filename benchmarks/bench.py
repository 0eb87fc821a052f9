"""Side-by-side ResNeSt benchmark; the same as ``splitattn bench`` (see ``--help``).

Example (the CPU figures of RESULTS.md)::

    python benchmarks/bench.py --device cpu --threads 2 -b 8 --img-size 224 --optimized --onnx \
        --json benchmarks/results/cpu_fp32.json
"""

from __future__ import annotations

import sys

from splitattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
