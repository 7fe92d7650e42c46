"""Sampling with patch schedules (paper §3.3, §3.4, App. B.2): the library behind `flexcli sample`.

* `config`: SampleConfig and its resolution (defaults < recipe < flags), checks that need no model;
* `plan`: the run resolved against a model: schedule, timesteps, labels, scales, exact cost per step;
* `denoiser`: the denoiser callable of each step and the sampling loop (`sample_latents`, `sample`);
* `outputs`: what run.json records;
* `sharding`: the whole job (`run`), in one process or over torchrun ranks, written atomically.
Sample i always uses seed base + i for its initial and per-step noise, whatever the batch or the number of
processes. The library never prints: progress goes to the `progress(info)` callback.
"""
from flexcli.sampling.config import DTYPES, PACKING, SampleConfig, resolve_config, validate
from flexcli.sampling.denoiser import make_denoiser, sample, sample_latents
from flexcli.sampling.outputs import run_record
from flexcli.sampling.plan import Plan, make_plan
from flexcli.sampling.sharding import run

__all__ = ["DTYPES", "PACKING", "Plan", "SampleConfig", "make_denoiser", "make_plan", "resolve_config", "run",
           "run_record", "sample", "sample_latents", "validate"]
