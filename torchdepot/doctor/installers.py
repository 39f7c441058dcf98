"""One build decision, spelled for every installer. Pure: no I/O.

``doctor`` decides which build fits a machine (the driver runs its CUDA version and its
compiled architectures cover every GPU). Each installer takes that decision in its own
words, and a user who sets them by hand tends to get one of them wrong:

- pip: the mirror's (or PyTorch's) ``whl/<accelerator>`` index;
- uv: ``--torch-backend <accelerator>`` (``UV_TORCH_BACKEND``). uv's ``auto`` reads only the
  driver, not the GPU's architecture (uv#14742), so it would pick cu130 for a GTX 1080 on
  driver 580: the explicit backend keeps the decision;
- conda / mamba / pixi: ``CONDA_OVERRIDE_CUDA`` caps the ``__cuda`` virtual package at the
  chosen CUDA version so the solver cannot pick a newer CUDA build than the GPU runs (empty:
  no ``__cuda``, the CPU build), ``CONDA_OVERRIDE_CUDA_ARCH`` sets CEP-46's ``__cuda_arch``
  (the lowest compute capability of the GPUs, ``{major}.{minor}``; absent without ``__cuda``),
  and the specs pin ``cuda-version`` (conda-forge chooses its CUDA build through it);
- a variant-aware installer (PEP 817/825): the label (``cuda12.6``; ``null`` is the CPU build)
  and the provider properties that select it, in PEP 825's ``namespace :: feature :: value``
  form (nvidia-variant-provider's ``cuda_version_lower_bound`` and ``sm_arch``), and the
  NVIDIA provider's own override variables (``NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION``
  and ``NV_VARIANT_PROVIDER_FORCE_SM_ARCH``, which uv's built-in provider reads; uv has no
  other override). The driver is stated as the chosen build's CUDA version, not the real
  driver's: the provider then picks the newest label up to the decision, as pip is told to.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchdepot.model.accel import Accelerator, accelerator_from_dir, variant_label
from torchdepot.model.gpu_tables import Cap
from torchdepot.store import layout


@dataclass(frozen=True)
class InstallerFacts:
    """The recommended build, as each installer is told to pick it."""

    accelerator: str  # cpu, cu126, rocm7.1, xpu
    torch: str | None  # the torch release the decision holds for ("2.14"; None: any)
    pip_index: str  # the index path under a mirror or download.pytorch.org: whl/cu126
    uv_torch_backend: str  # uv --torch-backend / UV_TORCH_BACKEND
    conda_override_cuda: str | None  # CONDA_OVERRIDE_CUDA ("" = no __cuda; None = not a conda decision)
    conda_override_cuda_arch: str | None  # CONDA_OVERRIDE_CUDA_ARCH (CEP-46), only beside __cuda
    conda_specs: tuple[str, ...]  # match specs that hold the decision on conda-forge
    variant_label: str  # PEP 825 label
    variant_properties: tuple[str, ...]  # "namespace :: feature :: value"
    variant_env: tuple[tuple[str, str], ...] = ()  # the variant provider's override variables

    def env(self) -> dict[str, str]:
        """The environment variables that carry the decision (``doctor --format env``)."""
        out = {"UV_TORCH_BACKEND": self.uv_torch_backend}
        if self.conda_override_cuda is not None:
            out["CONDA_OVERRIDE_CUDA"] = self.conda_override_cuda
        if self.conda_override_cuda_arch is not None:
            out["CONDA_OVERRIDE_CUDA_ARCH"] = self.conda_override_cuda_arch
        out.update(self.variant_env)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "accelerator": self.accelerator,
            "torch": self.torch,
            "pip": {"index": self.pip_index},
            "uv": {"torch_backend": self.uv_torch_backend},
            "conda": {"CONDA_OVERRIDE_CUDA": self.conda_override_cuda,
                      "CONDA_OVERRIDE_CUDA_ARCH": self.conda_override_cuda_arch,
                      "specs": list(self.conda_specs)},
            "variant": {"label": self.variant_label, "properties": list(self.variant_properties),
                        "env": dict(self.variant_env)},
            "env": self.env(),
        }


def _sm(cap: Cap) -> str:
    return f"{cap[0]}{cap[1]}_real"


def installer_facts(accelerator: str, caps: tuple[Cap, ...] | None, torch: str | None = None) -> InstallerFacts:
    """The decision ``accelerator`` (with the NVIDIA GPUs' compute capabilities ``caps``, None
    when unknown) for pip, uv, conda and a variant-aware installer."""
    acc = accelerator_from_dir(accelerator) or Accelerator("cpu")
    label = variant_label(acc)
    specs: tuple[str, ...]
    props: tuple[str, ...] = ()
    cuda_arch: str | None = None
    variant_env: tuple[tuple[str, str], ...] = ()
    if acc.kind == "cuda":
        cuda = acc.cuda_version or ""
        override: str | None = cuda
        if caps:
            low = min(caps)
            cuda_arch = f"{low[0]}.{low[1]}"
        specs = ("pytorch", f"cuda-version={cuda}", f"pytorch=*=cuda{cuda.replace('.', '')}*")
        props = (f"nvidia :: cuda_version_lower_bound :: {cuda}",
                 *(f"nvidia :: sm_arch :: {_sm(c)}" for c in sorted(set(caps or ()))))
        variant_env = (("NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION", cuda),
                       *((("NV_VARIANT_PROVIDER_FORCE_SM_ARCH", cuda_arch),) if cuda_arch else ()))
    elif acc.kind == "cpu":
        override = ""  # conda: an empty override removes __cuda, so only CPU builds solve
        specs = ("pytorch", "pytorch=*=cpu*")
    else:  # ROCm and XPU have no conda-forge builds or conda virtual package to steer
        override = None
        specs = ()
    return InstallerFacts(
        accelerator=acc.name, torch=torch, pip_index=layout.pip_index(acc.name), uv_torch_backend=acc.name,
        conda_override_cuda=override, conda_override_cuda_arch=cuda_arch, conda_specs=specs,
        variant_label=label, variant_properties=props, variant_env=variant_env,
    )
