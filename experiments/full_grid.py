"""Run a modality-knockout grid: `python experiments/full_grid.py --preset demo` (see `--help`); the same
command as `ablate grid`.

On a cluster: `ray submit cluster/gpu.yaml experiments/full_grid.py -- --preset paper --address auto ...`.
"""
import sys

from ablate.cli_grid import grid_main

if __name__ == "__main__":
    sys.exit(grid_main())
