"""``torchdepot recipes build``: build the shipped recipes offline into a local conda channel."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_WHEEL_DIR = Path("mirror/out/packages/torch")


@click.group("recipes")
def recipes_group() -> None:
    """Conda recipes this project builds offline (needs the extra: pip install 'torchdepot[conda-build]')."""


@recipes_group.command("build")
@click.option("--wheel", "wheels", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Wheel(s) to repackage: --wheel A.whl B.whl, or --wheel repeated (torch -> pytorch with an "
                   "accelerator build string; others -> their conda-forge name). "
                   "Default: torch wheels in mirror/out/packages/torch/.")
@click.argument("more_wheels", nargs=-1, metavar="[WHEEL]...", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("recipes/out"),
              show_default=True, help="Channel directory to build into.")
@click.option("--python", "python", metavar="X.Y", help="Python for pure wheels (default: that of the torch wheels).")
@click.option("--cuda", "cuda", multiple=True, metavar="X.Y", help="pytorch-cuda versions (default: 11.8, 12.6, 12.8).")
@click.option("--no-metapackages", is_flag=True, help="Skip pytorch-mutex / cpuonly / pytorch-cuda.")
def build_cmd(wheels: tuple[Path, ...], more_wheels: tuple[Path, ...], out: Path, python: str | None, cuda: tuple[str, ...], no_metapackages: bool) -> None:
    """Build the metapackages and repackage wheels, then index the channel.

    Each package depends on the python its wheel was built for and on the wheel's
    requirements under their conda-forge names.

    \b
    Example:
      torchdepot recipes build --wheel mirror/out/packages/torch/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \\
          mirror/out/packages/sympy/sympy-1.13.3-py3-none-any.whl
      conda install -c file://$PWD/recipes/out -c conda-forge pytorch cpuonly
    """
    from torchdepot.ship import recipes as R
    from torchdepot.store.channel import normalize_indexed_channel

    R.require_rattler_build()
    wheel_list = list(dict.fromkeys([*wheels, *more_wheels]))
    if not wheel_list and DEFAULT_WHEEL_DIR.is_dir():
        wheel_list = sorted(DEFAULT_WHEEL_DIR.glob("torch-*.whl"))
        if wheel_list:
            click.echo(f"using {len(wheel_list)} torch wheel(s) from {DEFAULT_WHEEL_DIR}/")
    built = []
    R.plan_wheels(wheel_list, python)  # a bad wheel fails in one line before any progress is printed
    # one line per step as it starts: repackaging a torch wheel takes minutes, never silently
    if not no_metapackages:
        click.echo("building the metapackages (pytorch-mutex, cpuonly, pytorch-cuda) ...", err=True)
        built += R.build_metapackages(out, tuple(cuda) or R.DEFAULT_CUDA)
    if wheel_list:
        built += R.build_wheels(wheel_list, out, python=python, on_start=lambda i, n, plan: click.echo(
            f"[{i}/{n}] repackaging {plan.wheel.name} as {plan.conda_name} ({plan.subdir}, python {plan.python}) ...",
            err=True))
    click.echo(f"indexing {out} ...", err=True)
    R.index_channel(out)
    normalize_indexed_channel(out)
    for b in built:
        click.echo(f"{b.subdir}/{b.path.name}")
    click.echo(f"{len(built)} packages in channel {out} (repodata indexed)")


COMMANDS = [recipes_group]
