"""`sa extract` and `sa backbones`: thin typer wrappers over sa.extract."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sa.clikit import cache_option, console, err_console, friendly, quiet_option
from sa.errors import SAError


@friendly
def extract_cmd(
    backbone: List[str] = typer.Option(..., "--backbone", "-b", help="Alias (see `sa backbones`) or open_clip:ARCH[:TAG], timm:NAME[.TAG], torchvision:NAME[:ENTRY], hf:REPO_ID[@REVISION] or hf:FOLDER. Repeat for several."),
    images: Path = typer.Option(..., "--images", "-i", help="Image folder (recursive; THINGS training_images/test_images understood) or a text file of image paths."),
    cache: Optional[str] = cache_option(),
    weights: Optional[List[Path]] = typer.Option(None, "--weights", help="Local checkpoint (.pt/.pth/.bin/.safetensors) instead of the hub; one per --backbone. Its preprocessing is never guessed: torchvision uses the weights entry the file matches (sha256 prefix or file name), else name it (torchvision:ARCH:ENTRY or --transform); timm/open_clip need the tag in the name when the architecture's tags preprocess differently."),
    transform: Optional[List[str]] = typer.Option(None, "--transform", help="torchvision only: the preprocessing preset, a weights entry of the architecture (e.g. IMAGENET1K_V1) or 'imagenet' (resize 256, crop 224); one per --backbone."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights (for tests; recorded in the key)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    pool: Optional[List[str]] = typer.Option(None, "--pool", help="cls, mean (patch tokens) or gap (CNN maps); repeat. Default: all that apply."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input resolution in pixels (default: the backbone's own); recorded in the key."),
    batch_size: str = typer.Option("32", "--batch-size", help="Images per forward pass, or auto (on CUDA the largest power of two up to 256 whose forward fits; 32 elsewhere); part of the cache key, since another batch shape can change the last float16 digit."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto = fp32 (full precision; TF32 off on CUDA). bf16 / fp16 cast weights and inputs (no autocast); on MobileNetV2 bf16 moves rows 7.5 % from fp32 (median, up to 39 %), fp16 0.46 % (up to 2 %); float16 storage alone 0.02 %."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Store NaN rows for unreadable images (listed in the manifest) instead of stopping."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader decode processes, 0 = decode in this process (default: spare cores, at most 8)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed scheduler address: shard the images over its workers."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Start a local dask cluster of N single-thread worker processes."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing the same group, wait for it instead of stopping."),
    quiet: bool = quiet_option(),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="hf: backbones only: allow a repo's own model code to run (InternViT-6B needs it); read that code first."),
) -> None:
    """Run backbones once over an image set and cache the pooled output of every layer."""
    from sa.extract.runner import AUTO, extract

    if batch_size != AUTO:
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise SAError(f"--batch-size {batch_size!r} must be a whole number of at least 1, or auto.") from None

    groups = extract(
        images, backbone, cache, weights=(weights[0] if weights and len(weights) == 1 else weights) or None,
        transform=(transform[0] if transform and len(transform) == 1 else transform) or None,
        random_init=random_init, seed=seed, pools=pool or None, image_size=image_size, batch_size=batch_size,
        device=device, dtype=dtype, skip_bad=skip_bad, num_workers=num_workers, scheduler=scheduler,
        n_workers=workers, wait=wait, progress=not quiet, log=lambda m: err_console.print(m, highlight=False),
        trust_remote_code=trust_remote_code,
    )
    for g in groups:
        skipped = len(g.manifest.get("skipped") or [])
        console.print(f"{g.key}  {g.n_rows} images  {len(g.arrays)} arrays" + (f"  ({skipped} skipped)" if skipped else ""), highlight=False)


@friendly
def backbones_cmd(
    name: Optional[List[str]] = typer.Argument(None, help="Backbones to describe (default: every alias)."),
) -> None:
    """List backbones: blocks, width, parameters, pretrained tag and whether the weights are in the local cache."""
    from rich import box
    from rich.table import Table

    from sa.extract.backbones import list_backbones

    table = Table(title="Backbones (sa extract --backbone NAME)", box=box.SIMPLE_HEAD, pad_edge=False)
    infos = list_backbones(list(name) if name else None)
    table.add_column("name", no_wrap=True, style="bold", min_width=max(len(i.name) for i in infos))
    for col, width in (("blocks", 6), ("width", 5), ("params", 10)):
        table.add_column(col, justify="right", no_wrap=True, min_width=width)
    table.add_column("pretrained", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("local", no_wrap=True, min_width=5)
    table.add_column("source", overflow="ellipsis", no_wrap=True)
    for info in infos:
        table.add_row(info.name, str(info.blocks), str(info.width), f"{info.params / 1e6:,.1f} M",
                      info.pretrained, "yes" if info.local else "no", info.generic)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `extract` and `backbones` to the root app."""
    app.command("extract", help=extract_cmd.__doc__)(extract_cmd)
    app.command("backbones", help=backbones_cmd.__doc__)(backbones_cmd)
