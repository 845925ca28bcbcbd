"""longtail: deep long-tailed image recognition, the thesis companion's helper library.

Modules, one concern each (the README's module table says what each holds):

- where things are: config, fileio, rundir
- data: data, subsets, selection, imagecache, transforms, datasummary
- one run: params, models, features, partial, losses, samplers, methods, engine, inference, metrics, run
- grids: gridspec, notebook, kernels, executors, slurm, grid, archive
- analysis: results, leaderboard, thesis, figures, report
"""
__version__ = "0.1.0"
