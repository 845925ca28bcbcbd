"""longtail: deep long-tailed image recognition, the thesis companion's helper library.

Modules, one concern each (the README's module table says what each holds), in layers.  A module
imports only modules of its own layer or of the layers above it in this list, never one below, and
no two modules import each other, directly or around a circle (``tests/test_layers.py`` reads every
import, at module level and inside functions, and fails on either).  An import inside a function is
only there to keep an expensive package (torch) out of a process that does not need it.

1. base: config, fileio, kernels, slurm, taxonomy
2. formulas: subsets, metrics, selection, lossinfo, losses, samplers, transforms, methods
3. models and images: models, inference, imagecache, arraycache, data, datasummary
4. parameters: params, rundir, gridspec
5. one run: engine, features, partial, run
6. grids: notebook, executors, grid, archive
7. reading results: results, predictions, tables, thesis, leaderboard, figures, report
"""
__version__ = "0.1.0"
