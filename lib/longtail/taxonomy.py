"""The survey's taxonomy of deep long-tailed learning (Zhang et al., *Deep Long-Tailed Learning: A
Survey*, TPAMI 2023, Fig. 2): its three families and the sub-families our methods belong to.

Each loss (``losses``), technique (``methods``) and run ingredient (``leaderboard.method_family``)
names its family with these strings, written ``"<family>: <sub-family>"``.
"""
from __future__ import annotations

RE_BALANCING = "class re-balancing"
AUGMENTATION = "information augmentation"
MODULE = "module improvement"

RE_SAMPLING = f"{RE_BALANCING}: re-sampling"
RE_WEIGHTING = f"{RE_BALANCING}: re-weighting"          # cost-sensitive learning: per-class weights
RE_MARGINING = f"{RE_BALANCING}: re-margining"          # cost-sensitive learning: per-class margins
LOGIT_ADJUSTMENT = f"{RE_BALANCING}: logit adjustment"
DATA_AUGMENTATION = f"{AUGMENTATION}: data augmentation"
FEATURE_AUGMENTATION = f"{AUGMENTATION}: feature augmentation"
TEST_TIME_AUGMENTATION = f"{AUGMENTATION}: test-time augmentation"
DECOUPLED_TRAINING = f"{MODULE}: decoupled training"
CLASSIFIER_DESIGN = f"{MODULE}: classifier design"
ENSEMBLE = f"{MODULE}: ensemble learning"
#: the family of a method with no long-tailed ingredient (plain CE, instance sampling)
BASELINE = "baseline"
