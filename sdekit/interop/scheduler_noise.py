"""What ``SdekitScheduler`` tells a pipeline about its forward process: the noise it adds at a timestep
(``add_noise``, ``scale_noise``), the v-prediction target, the network's input scaling and the DDPM table's
``betas``, ``alphas``, ``alphas_cumprod``, for the three kinds of config it reads (a DDPM beta table, a
flow-matching path, an EDM process; ``sdekit.interop.edm_scheduler``)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..sde import DiscreteVPSDE, LinearSDE
from .edm_scheduler import EDMSpec, c_in

Tensor = torch.Tensor


class ForwardProcessMixin:
    """add_noise, scale_noise, get_velocity, scale_model_input and the table's attributes of ``SdekitScheduler``."""

    sde: LinearSDE
    flow: bool
    edm: Optional[EDMSpec]
    config: Any
    ts: Optional[Tensor]
    timesteps: Optional[Tensor]
    sigmas: Optional[Tensor]
    step_index: Optional[int]
    begin_index: Optional[int]

    @property
    def _table(self) -> DiscreteVPSDE:
        """The DDPM table (a flow-matching or EDM scheduler has none)."""
        if not isinstance(self.sde, DiscreteVPSDE):
            raise AttributeError(f"a {'flow-matching' if self.flow else 'EDM'} SdekitScheduler has no beta table "
                                 "(betas, alphas, alphas_cumprod)")
        return self.sde

    def _grid_index(self, tau: Tensor):
        """(hit, index) of each timestep on the grid's timesteps (hit: within 1e-4), or None before set_timesteps."""
        if self.timesteps is None or self.ts is None:
            return None
        d = (tau[:, None] - self.timesteps.to(torch.float64).cpu()[None]).abs().min(dim=1)
        return d.values < 1e-4, d.indices

    def _row_times(self, timesteps, batch: int) -> Tensor:
        """The sdekit time of each timestep: DDPM table (timestep + 1)/N; flow matching the grid's sigma, else
        timestep/N; EDM the grid's sigma, else exp(4 timestep) (c_noise's inverse)."""
        tau = torch.as_tensor(timesteps, dtype=torch.float64).cpu().reshape(-1)
        if not self.flow and self.edm is None:
            t = self._table.step_time(tau)
        else:  # the grid's time where the timestep is on the grid (custom timesteps need not be sigma N)
            t = tau / self.config["num_train_timesteps"] if self.flow else torch.exp(4 * tau).clamp(max=self.sde.T)
            found = self._grid_index(tau)
            if found is not None:
                assert self.ts is not None
                t = torch.where(found[0], self.ts[found[1].clamp(max=len(self.ts) - 1)], t)
        return t.expand(batch) if t.numel() == 1 else t

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The network's input: the identity for a DDPM table or a flow path (the network takes the state), EDM's
        c_in(sigma) x = x / sqrt(sigma^2 + sigma_data^2) at the timestep's sigma."""
        if self.edm is None:
            return sample
        index = self.step_index if self.step_index is not None else self.begin_index
        if index is None and timestep is not None:
            found = self._grid_index(torch.as_tensor(timestep, dtype=torch.float64).cpu().reshape(-1)[:1])
            index = int(found[1][0]) if found is not None and bool(found[0][0]) else None
        if index is None or self.sigmas is None or index >= len(self.sigmas) - 1:
            if timestep is None:
                raise ValueError("scale_model_input of an EDM scheduler needs the timestep (its sigma scales the input)")
            sigma = torch.exp(4 * torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[:1]).to(torch.float32)
        else:
            sigma = self.sigmas[index]
        return sample * c_in(self.edm, sigma.to(sample.device))

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) n at the times of ``timesteps`` (t = (timestep + 1)/N; flow matching: t the
        grid's sigma of the timestep, else timestep/N, so x_t = (1 - t) x0 + t n; EDM: x0 + sigma n)."""
        return self.sde.perturb(original_samples, self._row_times(timesteps, original_samples.shape[0]), noise)

    def scale_noise(self, sample: Tensor, timestep, noise: Optional[Tensor] = None) -> Tensor:
        """FlowMatchEulerDiscreteScheduler's name and argument order for ``add_noise`` (its image-to-image
        pipelines call it): x_t = alpha(t) sample + sigma(t) noise."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target v = alpha(t) n - sigma(t) x0 (Salimans & Ho 2022) at ``timesteps``."""
        t = self._row_times(timesteps, sample.shape[0])
        shape = (-1,) + (1,) * (sample.ndim - 1)
        a, s = (f(t).reshape(shape).to(sample.device, sample.dtype) for f in (self.sde.alpha, self.sde.sigma))
        return a * noise - s * sample

    @property
    def alphas_cumprod(self) -> Tensor:
        """abar_n of the beta table (float32, as diffusers' schedulers hold it)."""
        return self._table.alphas_cumprod.to(torch.float32)

    @property
    def betas(self) -> Tensor:
        return self._table.betas.to(torch.float32)

    @property
    def alphas(self) -> Tensor:
        return (1 - self._table.betas).to(torch.float32)
