"""longtail: deep long-tailed image recognition, the thesis companion's helper library.

Modules (one concern each): config, data, subsets, imagecache, transforms, losses,
samplers, models, features, engine, metrics, params, run, grid, report.
"""
__version__ = "0.1.0"
