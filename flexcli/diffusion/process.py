"""DiT's Gaussian diffusion process (from OpenAI's ADM/IDDPM, as used by facebookresearch/DiT).

1000 linear betas, epsilon prediction, learned-range variance, timestep respacing that keeps the original
timesteps (`timestep_map`), the DDPM posterior and the loss terms (MSE + VB). Works on tensors only and
never imports a model: denoisers are callables.
Schedule arrays are float64; per-timestep values are extracted to float32, as in ADM.
"""
from __future__ import annotations

import math

import torch


def linear_betas(num_timesteps: int = 1000) -> torch.Tensor:
    """DiT's linear schedule: 1e-4 .. 0.02 for 1000 steps (scaled for other step counts), float64."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int) -> list[int]:
    """ADM's respacing: "250" -> 250 steps at a fractional stride (0, 4, 8, ..., 995, 999); "ddimN" -> an
    exact integer stride; "10,15,20" -> that many steps in each equal section. Returns sorted timesteps."""
    if isinstance(section_counts, int):
        section_counts = str(section_counts)
    if section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
    counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _extract(arr: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32, shaped (N, 1, 1, ...) to broadcast over a batch of `ndim`-d tensors."""
    out = arr.to(t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretised to 256 bins (ADM's decoder NLL at t = 0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.dim())))


class GaussianDiffusion:
    """The forward process q and the model's reverse process p for one (possibly respaced) schedule.

    `timestep_map[i]` is the original timestep (0..999) that spaced index i stands for: the model is
    always called with original timesteps.
    """

    def __init__(self, betas: torch.Tensor | None = None, timestep_map: list[int] | None = None):
        betas = linear_betas() if betas is None else betas.to(torch.float64)
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(len(betas)))
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], torch.zeros(1, dtype=torch.float64)])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0: clip its log with the value at t = 1 (beta_0 for a 1-step process).
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    @classmethod
    def respaced(cls, steps: str | int, num_timesteps: int = 1000) -> "GaussianDiffusion":
        """DiT's `create_diffusion(str(steps))`: keep `space_timesteps(...)` and rebuild betas from alpha-bar."""
        use = space_timesteps(num_timesteps, steps) if steps not in ("", None) else list(range(num_timesteps))
        return cls.from_timesteps(use, num_timesteps)

    @classmethod
    def from_timesteps(cls, use: list[int], num_timesteps: int = 1000) -> "GaussianDiffusion":
        """The process restricted to the original timesteps `use` (any increasing list, e.g. a solver's grid)."""
        use = sorted(int(t) for t in use)
        base = cls(linear_betas(num_timesteps))
        last, new_betas = 1.0, []
        for i in use:
            ac = base.alphas_cumprod[i].item()
            new_betas.append(1.0 - ac / last)
            last = ac
        return cls(torch.tensor(new_betas, dtype=torch.float64), use)

    def original_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """Spaced indices -> the original timesteps the model sees."""
        return self.timestep_map.to(index.device)[index]

    # ------------------------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (t: spaced indices)."""
        n = x_start.dim()
        return _extract(self.sqrt_alphas_cumprod, t, n) * x_start + _extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        n = x_t.dim()
        mean = _extract(self.posterior_mean_coef1, t, n) * x_start + _extract(self.posterior_mean_coef2, t, n) * x_t
        return mean, _extract(self.posterior_variance, t, n), _extract(self.posterior_log_variance_clipped, t, n)

    def predict_xstart_from_eps(self, x_t, t, eps):
        n = x_t.dim()
        return _extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        n = x_t.dim()
        return (_extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - pred_xstart) / _extract(self.sqrt_recipm1_alphas_cumprod, t, n)

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        learn_sigma: bool = True, clip_denoised: bool = False) -> dict:
        """Split the model output into eps and (learned-range) variance and form p(x_{t-1} | x_t).

        Without learned sigma the fixed "large" variance (beta_t, with the posterior value at t = 0) is used.
        """
        n, c = x_t.dim(), x_t.shape[1]
        if learn_sigma:
            eps, v = model_output[:, :c], model_output[:, c:2 * c]
            min_log = _extract(self.posterior_log_variance_clipped, t, n)
            max_log = _extract(torch.log(self.betas), t, n)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            eps = model_output[:, :c]
            large = torch.cat([self.posterior_variance[1:2] if self.num_timesteps > 1 else self.betas[:1],
                               self.betas[1:]])
            variance = _extract(large, t, n).expand_as(x_t)
            log_variance = _extract(torch.log(large), t, n).expand_as(x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart,
                "eps": eps}

    # ------------------------------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output, x_start, x_t, t, learn_sigma: bool = True) -> torch.Tensor:
        """Per-sample variational bound term in bits per dim (decoder NLL at t = 0, KL otherwise)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, learn_sigma=learn_sigma)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_output, x_start, t, noise, x_t=None, learn_sigma: bool = True) -> dict:
        """DiT's loss: MSE on eps plus, with learned sigma, the VB term on a mean-detached output."""
        x_t = self.q_sample(x_start, t, noise) if x_t is None else x_t
        c = x_start.shape[1]
        terms = {"mse": mean_flat((noise - model_output[:, :c]) ** 2)}
        if learn_sigma:
            frozen = torch.cat([model_output[:, :c].detach(), model_output[:, c:]], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t, learn_sigma=True)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
