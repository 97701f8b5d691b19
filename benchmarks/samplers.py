"""Sampler benchmark: distance to a 2-D Gaussian mixture vs NFE, and engine overhead. Prints JSON.

The mixture's ideal denoiser is closed-form, so every error measured is the sampler's own. Besides
the sliced Wasserstein distance to true samples (which carries sampling noise), each row gives the
noise-free error: the mean distance of each sample from the same noise's ODE solution.
Run: python benchmarks/samplers.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from timing import median_seconds
from imagesynth.diffusion import (GaussianMixture, generators_from_seeds, get_sampler, karras_sigmas,
                                  randn_like_per_sample, sliced_wasserstein)

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


class TimedDenoiser:
    """Wraps a denoiser and accumulates the wall time spent inside it."""

    def __init__(self, denoiser):
        self.denoiser, self.seconds, self.calls = denoiser, 0.0, 0

    def __call__(self, x, sigma, **cond):
        start = time.perf_counter()
        out = self.denoiser(x, sigma, **cond)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Heun spends 2 NFE per step except the last (to sigma = 0), the others 1."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def starting_noise(seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Unit 2-D noise per sample, and the per-sample generators it was drawn from (ancestral
    samplers go on drawing from them)."""
    generators = generators_from_seeds(seeds)
    return randn_like_per_sample(torch.empty(len(seeds), 2, dtype=torch.float64), generators), generators


def distance_sweep(num_samples: int, nfe_grid: list[int], ancestral_max_nfe: int,
                   std: float = 0.05) -> dict:
    mixture = GaussianMixture.ring(num_components=8, radius=1.0, std=std)
    reference = mixture.sample(num_samples, torch.Generator().manual_seed(1))
    # the distance between independent true sets varies a lot from draw to draw: report its range
    floors = [sliced_wasserstein(mixture.sample(num_samples, torch.Generator().manual_seed(seed)),
                                 reference, num_projections=512) for seed in range(2, 6)]
    seeds = list(range(num_samples))
    # Noise-free error: each sample against the same noise's ODE solution (Heun, 1,000 steps)
    ode_sigmas = karras_sigmas(1000, SIGMA_MIN, SIGMA_MAX, RHO, dtype=torch.float64)
    start_noise, _ = starting_noise(seeds)
    ode_solution = get_sampler("heun")(mixture, start_noise * ode_sigmas[0], ode_sigmas)
    results = {"noise_floor": floors[0], "noise_floor_range": [min(floors), max(floors)],
               "samplers": {}}
    for name in ["euler", "heun", "dpmpp_2m", "euler_ancestral"]:
        rows = []
        for nfe in nfe_grid:
            if name == "euler_ancestral" and nfe > ancestral_max_nfe:
                continue
            steps = steps_for_nfe(name, nfe)
            sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO, dtype=torch.float64)
            noise, generators = starting_noise(seeds)
            x = noise * sigmas[0]
            timed = TimedDenoiser(mixture)
            start = time.perf_counter()
            samples = get_sampler(name)(timed, x, sigmas, generator=generators)
            total = time.perf_counter() - start
            rows.append({"nfe": timed.calls, "steps": steps,
                         "sliced_wasserstein": sliced_wasserstein(samples, reference, num_projections=512),
                         "mean_error_vs_ode_solution": None if name == "euler_ancestral" else
                         (samples - ode_solution).norm(dim=1).mean().item(),
                         "seconds_total": round(total, 4), "seconds_denoiser": round(timed.seconds, 4),
                         "seconds_engine": round(total - timed.seconds, 4)})
        results["samplers"][name] = rows
    return results


def within(rows: list[dict], target: float, tolerance: float = 0.05) -> int | None:
    """Smallest NFE whose distance is within `tolerance` (relative) of `target`."""
    for row in rows:
        if row["sliced_wasserstein"] <= target * (1 + tolerance):
            return row["nfe"]
    return None


class ConvNet(nn.Module):
    """A dummy network costing several ms per call on a latent-sized tensor (no sleeping)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, 4, 3, padding=1))

    def forward(self, x, sigma):
        return x - self.body(x) * 0.01


class UNetNetwork(nn.Module):
    """The bundled `emoji` preset's text-conditioned UNet (random weights) on 16x16x4 latents."""

    def __init__(self):
        super().__init__()
        from imagesynth.nets.unet import build_unet
        self.unet = build_unet("emoji").eval()
        self.states, self.mask = torch.randn(2, 12, 384), torch.ones(2, 12)

    def forward(self, x, sigma):
        return x - 0.01 * self.unet(x, torch.log(sigma) / 4, self.states, self.mask)


@torch.no_grad()
def overhead(repeats: int, width: int, num_steps: int, network_kind: str = "convnet") -> dict:
    torch.manual_seed(0)
    if network_kind == "unet":
        network, x_shape = UNetNetwork(), (2, 4, 16, 16)
    else:
        network, x_shape = ConvNet(width).eval(), (2, 4, 64, 64)
    probe = torch.randn(x_shape)
    for _ in range(3):
        network(probe, torch.ones(x_shape[0]))
    results = {"network": network_kind, "x_shape": list(x_shape)}
    for name in ["euler", "heun", "dpmpp_2m", "euler_ancestral"]:
        fractions, per_call = [], []
        for _ in range(repeats):
            sigmas = karras_sigmas(num_steps, 0.03, 14.6)
            generators = generators_from_seeds([0, 1])
            x = randn_like_per_sample(torch.empty(x_shape), generators) * sigmas[0]
            timed = TimedDenoiser(network)
            start = time.perf_counter()
            get_sampler(name)(timed, x, sigmas, generator=generators)
            total = time.perf_counter() - start
            fractions.append((total - timed.seconds) / total)
            per_call.append(timed.seconds / timed.calls)
        results[name] = {"network_ms_per_call": round(1000 * statistics.median(per_call), 2),
                         "engine_overhead_percent": round(100 * statistics.median(fractions), 3)}
    # Cost of the per-step NaN check and of drawing the per-image noise, as shares of a network call.
    call_seconds = results["euler"]["network_ms_per_call"] / 1000
    check_seconds = median_seconds(lambda: bool(torch.isfinite(probe).all()), 200)
    results["nan_check_percent_of_network_call"] = round(100 * check_seconds / call_seconds, 3)
    generators = generators_from_seeds([0, 1])
    noise_seconds = median_seconds(lambda: randn_like_per_sample(probe, generators), 200)
    results["noise_draw_percent_of_network_call"] = round(100 * noise_seconds / call_seconds, 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and a shorter NFE grid")
    parser.add_argument("--std", type=float, default=0.05,
                        help="std of each mixture component (smaller = sharper modes, stiffer ODE)")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the engine-overhead measurement (5 repeats, 20 steps)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.overhead_only:
        print(json.dumps({"benchmark": "samplers_overhead", "threads": torch.get_num_threads(),
                          "overhead": [overhead(repeats=5, width=64, num_steps=20, network_kind=kind)
                                       for kind in ("convnet", "unet")]}, indent=1))
        return
    if args.quick:
        sweep = distance_sweep(4000, [5, 10, 20, 35, 50, 100, 500], ancestral_max_nfe=50,
                               std=args.std)
        costs = [overhead(repeats=2, width=64, num_steps=10, network_kind=kind)
                 for kind in ("convnet", "unet")]
    else:
        sweep = distance_sweep(20000, [5, 10, 15, 20, 35, 50, 75, 100, 200, 500],
                               ancestral_max_nfe=100, std=args.std)
        costs = [overhead(repeats=5, width=64, num_steps=20, network_kind=kind)
                 for kind in ("convnet", "unet")]
    samplers = sweep["samplers"]
    summary = {}
    for name in ["euler", "heun", "dpmpp_2m"]:
        at_500 = samplers[name][-1]["sliced_wasserstein"]
        summary[name] = {"distance_at_500_nfe": at_500,
                         "min_nfe_within_5_percent_of_500": within(samplers[name], at_500)}
    heun_35 = next(row for row in samplers["heun"] if row["nfe"] == 35)
    summary["heun_35_over_heun_500"] = heun_35["sliced_wasserstein"] / samplers["heun"][-1]["sliced_wasserstein"]
    summary["heun_35_mean_error_vs_ode_solution"] = heun_35["mean_error_vs_ode_solution"]
    print(json.dumps({"benchmark": "samplers", "quick": args.quick,
                      "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads()},
                      "mixture": f"8 Gaussians on the unit circle, std {args.std}",
                      "schedule": {"kind": "karras", "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO},
                      "distance": "sliced 1-Wasserstein, 512 seeded projections",
                      "summary": summary, "sweep": sweep, "overhead": costs}, indent=1))


if __name__ == "__main__":
    main()
