"""Run a modality-knockout grid: `python experiments/full_grid.py --preset demo` (see `--help`); the same
command as `ablate grid`.

On a cluster: `ray job submit -- python /home/ray/ablate/experiments/full_grid.py --preset paper --address auto ...`
(README.md, "Running on a GPU cluster").
"""
import sys

from ablate.cli_grid import grid_main

if __name__ == "__main__":
    sys.exit(grid_main())
