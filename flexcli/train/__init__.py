"""`flexcli distill`: the training loop (loop.py), its objectives, state and recipes (config.py)."""
from flexcli.train.config import DistillConfig, load_recipe, resolve
from flexcli.train.evaluation import weak_vs_powerful_error
from flexcli.train.loop import DistillResult, StepInfo, distill

__all__ = ["DistillConfig", "DistillResult", "StepInfo", "distill", "load_recipe", "resolve", "weak_vs_powerful_error"]
