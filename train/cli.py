"""`sa sweep` and `sa train`: thin typer wrappers over sa.train.sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sa.clikit import (cache_option, console, data_option, device_option, friendly, images_option, layout_option,
                       meta_option, quiet_option)
from sa.train.results import DEFAULT_SELECT, SELECT_RULES



def _config(encoder: str, epochs: int, batch_size: int, lr: float, weight_decay: float, embed_dim: int,
            temperature: float, fixed_temperature: bool, no_image_proj: bool, select: str, device: str, precision: str):
    from sa.train.trainer import TrainConfig

    return TrainConfig(encoder=encoder, embed_dim=embed_dim, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, temperature=temperature, learn_temperature=not fixed_temperature,
                       image_proj=not no_image_proj, select=select, device=device, precision=precision)


# Options shared by sweep and train (typer needs them spelled out per command).
def _epochs(): return typer.Option(50, "--epochs", min=1, help="Training epochs.")  # noqa: E704
def _batch(): return typer.Option(1024, "--batch-size", min=2, help="Batch size (trials per step).")  # noqa: E704
def _lr(): return typer.Option(1e-4, "--lr", help="AdamW learning rate.")  # noqa: E704
def _wd(): return typer.Option(1e-4, "--weight-decay", help="AdamW weight decay.")  # noqa: E704
def _embed(): return typer.Option(1024, "--embed-dim", min=1, help="Width of the shared embedding space.")  # noqa: E704
def _temp(): return typer.Option(0.07, "--temperature", help="Initial CLIP temperature.")  # noqa: E704
def _fixed(): return typer.Option(False, "--fixed-temperature", help="Keep the temperature fixed instead of learning it.")  # noqa: E704
def _noproj(): return typer.Option(False, "--no-image-proj", help="No image projector: align with the raw features (embed dim = feature width).")  # noqa: E704
def _select(): return typer.Option(DEFAULT_SELECT, "--select", help="Epoch kept per run: " + "; ".join(f"{k} = {v}" for k, v in SELECT_RULES.items()) + " (default measured: docs/selection.md).")  # noqa: E704
def _channels(): return typer.Option("all", "--channels", help="Channels: all, occipital-parietal (the 17 of the paper) or a comma list of names.")  # noqa: E704
def _window(): return typer.Option(None, "--window", help="Time window 'tmin,tmax' in seconds (default: the whole epoch).")  # noqa: E704
def _single(): return typer.Option(False, "--single-trials", help="Train on single trials instead of repetition averages (test stays averaged).")  # noqa: E704
def _valf(): return typer.Option(0.1, "--val-fraction", help="Share of training concepts held out for validation (layer and epoch selection).")  # noqa: E704
def _split_seed(): return typer.Option(0, "--split-seed", help="Seed of the choice of validation concepts.")  # noqa: E704
def _prec(): return typer.Option("auto", "--precision", help="auto, fp32 or bf16 (training autocast).")  # noqa: E704
def _pool(): return typer.Option("auto", "--pool", help="Pooling: mean, cls or gap; auto = mean for token models, gap for CNNs.")  # noqa: E704
def _gallery(): return typer.Option(None, "--gallery", help="Score against concept centres: a cache key (or image-set id) of other images of each test concept.")  # noqa: E704


def sweep_cmd(
    data: Path = data_option(),
    backbone: list[str] = typer.Option(..., "--backbone", "-b", help="Cache key, unique prefix or alias (e.g. clip-vit-b16); repeat or comma-separate for several."),
    cache: Optional[str] = cache_option(),
    layers: str = typer.Option("all", "--layers", help="all | final | 1,4,8 | every:4 (the final layer is always added as the baseline) | mix | mix:1,4,8 (one run that learns weights over those layers; docs/mix.md)."),
    pool: str = _pool(),
    encoders: str = typer.Option("eegproject", "--encoders", help="Comma list of brain encoders (eegproject, linear, tsconv, atms, eegnet, shallownet, eegconformer), or ridge (closed form, every layer in seconds; docs/analyses.md)."),
    subjects: str = typer.Option("all", "--subjects", help="all, or a comma list (sub-01,2,...)."),
    seeds: str = typer.Option("5", "--seeds", help="Number of seeds (5 = 0..4) or a comma list."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (runs.csv, curves.csv); a rerun skips finished runs."),
    loso: bool = typer.Option(False, "--loso", help="Leave-one-subject-out: train on the other subjects, test on each listed subject."),
    gallery: Optional[str] = _gallery(),
    epochs: int = _epochs(), batch_size: int = _batch(), lr: float = _lr(), weight_decay: float = _wd(),
    embed_dim: int = _embed(), temperature: float = _temp(), fixed_temperature: bool = _fixed(),
    no_image_proj: bool = _noproj(), select: str = _select(), channels: str = _channels(),
    window: Optional[str] = _window(), single_trials: bool = _single(), val_fraction: float = _valf(),
    split_seed: int = _split_seed(),
    device: str = device_option(), precision: str = _prec(), layout: str = layout_option(),
    images: Optional[Path] = images_option(), meta: Optional[Path] = meta_option(),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask scheduler address: run jobs on that cluster (workers need the data and cache paths)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Run jobs on a local dask cluster of N worker processes."),
    categories: Optional[Path] = typer.Option(None, "--categories", help="CSV of concept,category rows (e.g. THINGS' high-level categories): adds concept_top5, the share of top-5 retrieved images from the target's category."),
    mix_weights: str = typer.Option("heldout", "--mix-weights", help="With --layers mix: heldout (weights learn from held-out training concepts; default, chosen on validation: docs/mix.md), softmax, or entropy (softmax plus an entropy penalty favouring few layers)."),
    mix_entropy: float = typer.Option(0.1, "--mix-entropy", help="With --mix-weights entropy: the penalty per nat of weight entropy."),
    mix_per_subject: bool = typer.Option(False, "--mix-per-subject", help="With --layers mix and --loso: each training subject gets its own layer weights; the test subject gets their mean."),
    save_embeddings: bool = typer.Option(False, "--save-embeddings", help="Keep each run's projected test embeddings (embeddings/<run_id>.npz, ~0.8 MB per THINGS run at embed dim 1024) for the report's UMAP."),
    quiet: bool = quiet_option(),
) -> None:
    """Train every subject x backbone x layer x encoder x seed and print the best layer per backbone.

    One row per run goes to OUT/runs.csv (per-epoch losses to curves.csv); the
    best layer is chosen by validation top-1 and compared with the final layer.
    """
    from sa.train.mix import MixOptions
    from sa.train.sweep import sweep

    mix = MixOptions(variant=mix_weights, entropy=mix_entropy, per_subject=mix_per_subject)
    cfg = _config("eegproject", epochs, batch_size, lr, weight_decay, embed_dim, temperature, fixed_temperature,
                  no_image_proj, select, device, precision)
    res = sweep(data, backbone, cache=cache, layers=layers, pool=pool, encoders=encoders, subjects=subjects, seeds=seeds,
                out=out, loso=loso, gallery_cache=gallery, config=cfg, channels=channels, window=window,
                single_trials=single_trials, val_fraction=val_fraction, split_seed=split_seed, layout=layout,
                image_root=images, meta=meta, scheduler=scheduler, workers=workers, progress=not quiet, console=console,
                mix=mix, categories=categories, save_embeddings=save_embeddings)
    console.print(f"{res.trained} run(s) trained, {res.skipped} already in {res.results.runs_path}.")


def train_cmd(
    data: Path = data_option(),
    backbone: str = typer.Option(..., "--backbone", "-b", help="Cache key, unique prefix or alias."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint file to write (.safetensors)."),
    cache: Optional[str] = cache_option(),
    layer: str = typer.Option("final", "--layer", help="Layer label (e.g. 07) or final."),
    pool: str = _pool(),
    encoder: str = typer.Option("eegproject", "--encoder", help="Brain encoder."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Subject (needed when the data hold several); with --loso the test subject."),
    seed: int = typer.Option(0, "--seed", help="Seed of the run (init, shuffling, dropout)."),
    loso: bool = typer.Option(False, "--loso", help="Train on all other subjects (leave-one-subject-out fold)."),
    gallery: Optional[str] = _gallery(),
    results: Optional[Path] = typer.Option(None, "--results", help="Also append the run's row to this results folder."),
    epochs: int = _epochs(), batch_size: int = _batch(), lr: float = _lr(), weight_decay: float = _wd(),
    embed_dim: int = _embed(), temperature: float = _temp(), fixed_temperature: bool = _fixed(),
    no_image_proj: bool = _noproj(), select: str = _select(), channels: str = _channels(),
    window: Optional[str] = _window(), single_trials: bool = _single(), val_fraction: float = _valf(),
    split_seed: int = _split_seed(),
    device: str = device_option(), precision: str = _prec(), layout: str = layout_option(),
    images: Optional[Path] = images_option(), meta: Optional[Path] = meta_option(),
) -> None:
    """Train one configuration and save encoder, projectors and config as one checkpoint file."""
    from sa.train.sweep import train_one

    cfg = _config(encoder, epochs, batch_size, lr, weight_decay, embed_dim, temperature, fixed_temperature,
                  no_image_proj, select, device, precision)
    row, path = train_one(data, backbone, out=out, cache=cache, layer=layer, pool=pool, encoder=encoder, subject=subject,
                          seed=seed, loso=loso, gallery_cache=gallery, config=cfg, channels=channels,
                          window=window, single_trials=single_trials, val_fraction=val_fraction,
                          split_seed=split_seed, layout=layout, image_root=images, meta=meta,
                          results=results)
    val = "–" if row["val_top1"] is None else f"{row['val_top1']:.1f}"
    console.print(f"{row['subject']} · {row['backbone']} · layer {row['layer']} · {row['encoder']}: "
                  f"test top-1 {row['top1']:.1f} %, top-5 {row['top5']:.1f} %, val top-1 {val} % (epoch {row['best_epoch']})")
    if row["status"] != "ok":
        console.print(f"[yellow]warning:[/] layer {row['layer']} has {row['status'].replace('-', ' ')}: its numbers "
                      "are not a meaningful alignment (check the cache or the backbone's weights).", highlight=False)
    console.print(f"checkpoint: {path}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("sweep")(friendly(sweep_cmd))
    app.command("train")(friendly(train_cmd))
