"""`sa cache ...`: list, inspect, verify, remove, export and import feature cache groups.

Thin wrappers over sa.cache; zarr and h5py load inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sa.clikit import CACHE_HELP, cache_option, console, friendly

app = typer.Typer(no_args_is_help=True, help="Inspect, verify, export and share feature caches.")

KEY_HELP = "Group key: '<image-set id>/<backbone key>', a backbone key, or a unique prefix (see `sa cache ls`)."


def _size(nbytes: float) -> str:
    """Human-readable bytes, e.g. '1.2 GB'."""
    from sa.errors import size_text

    return size_text(nbytes)


_STATUS_STYLE = {"complete": "[green]complete[/]", "partial": "[yellow]partial[/]", "damaged": "[bold red]damaged[/]"}


def _damaged_sentence(infos: list, what: str) -> str:
    """One sentence naming damaged groups, why, and the fix."""
    named = "; ".join(f"{i.key} ({i.manifest.get('damage_reason', 'damaged')})" for i in infos)
    return (f"{len(infos)} damaged group(s) {what}: {named}; remove each with `sa cache rm KEY` and extract or pull it "
            f"again.")


def _layers_text(layers: list[str]) -> str:
    """'00-12 (13)' for contiguous numeric labels, else a short list."""
    if not layers:
        return "final only"
    nums = [int(x) for x in layers if x.isdigit()]
    if len(layers) == 1:
        return layers[0]
    if len(nums) == len(layers) and nums == list(range(nums[0], nums[0] + len(nums))):
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ", ".join(layers[:6]) + (" ..." if len(layers) > 6 else "")


def _depth(value: object) -> str:
    """'depth 0.42' for a numeric depth, '' otherwise."""
    return f"depth {value:.2f}" if isinstance(value, (int, float)) else ""


@app.command("ls")
@friendly
def ls_cmd(
    root_arg: Optional[str] = typer.Argument(None, metavar="[ROOT]", help=CACHE_HELP),
    root: Optional[str] = cache_option(),
    scan: bool = typer.Option(False, "--scan", help="List by scanning the folders (shows partial groups) instead of the "
                              "lab index remote roots use by default; not possible over HTTP."),
) -> None:
    """List the groups under a cache root: image set, backbone, layers, poolings, N, size, status, created.

    Remote roots read the lab index (sa-index.json, complete groups only); local roots are scanned.
    """
    from rich import box
    from rich.table import Table

    from sa.cache import open_root

    cache = open_root(root_arg or root, read_only=True)
    cache.require_exists()
    infos = cache.list(use_index=False if scan else None)
    if not infos:
        console.print(f"No feature groups under {cache.url} yet; `sa extract` writes them.")
        return
    table = Table(title=f"Feature cache {cache.url}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    for col in ("image set", "backbone", "layers", "poolings", "N", "size", "status", "created"):
        table.add_column(col, justify="right" if col in ("N", "size") else "left",
                         no_wrap=col in ("image set", "backbone"))
    for info in infos:
        status = _STATUS_STYLE.get(info.status, info.status)
        if info.status == "damaged":  # its manifest is gone: only the key and the size on disk are known
            table.add_row(info.image_set_id, info.backbone_key, "?", "?", "?", _size(info.nbytes), status, "")
            continue
        table.add_row(info.image_set_id, info.backbone_key, _layers_text(info.layers), ",".join(info.pools) or "-",
                      f"{info.n:,}", _size(info.nbytes), status, info.created[:10])
    console.print(table)
    damaged = [i for i in infos if i.status == "damaged"]
    if damaged:
        console.print(f"[bold red]{_damaged_sentence(damaged, 'under ' + cache.url)}[/]", highlight=False)


@app.command("info")
@friendly
def info_cmd(
    key: str = typer.Argument(..., help=KEY_HELP),
    root: Optional[str] = cache_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the raw manifest as JSON."),
) -> None:
    """Show a group's manifest: backbone, weights, transform, layers, arrays and digests."""
    from rich.pretty import Pretty
    from rich.table import Table

    from sa.cache import open_root

    info = open_root(root, read_only=True).info(key)
    if as_json:
        typer.echo(json.dumps(info.manifest, indent=2, sort_keys=True))
        return
    m = info.manifest
    table = Table(show_header=False, title=f"{info.key}  ({info.status}, {_size(info.nbytes)})", title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    for field in ("backbone", "key_spec", "transform", "image_size", "dtype", "device", "n", "block_rows", "pools",
                  "image_root", "created", "completed", "libraries", "sa_version"):
        if field in m:
            value = m[field]
            table.add_row(field, Pretty(value) if isinstance(value, (dict, list)) else str(value))
    layers = m.get("layers") or []
    table.add_row("layers", "\n".join(
        "  ".join(str(v) for v in (x.get("label"), x.get("module"), _depth(x.get("depth"))) if v not in (None, ""))
        for x in layers) or "-")
    if m.get("skipped"):
        table.add_row("skipped", f"{len(m['skipped'])} unreadable image(s), e.g. {m['skipped'][0]}")
    arrays = m.get("arrays") or {}
    table.add_row("arrays", "\n".join(
        f"{n}  {tuple(a.get('shape', []))}  {a.get('dtype', '')}  {str(a.get('digest', '-'))[:19]}" for n, a in arrays.items()))
    console.print(table)


@app.command("verify")
@friendly
def verify_cmd(
    key: Optional[str] = typer.Argument(None, help=KEY_HELP + " Omit to verify every complete group."),
    root: Optional[str] = cache_option(),
) -> None:
    """Recompute every array digest, check float arrays hold no NaN/Inf, and name what fails (exit status 1 if any).

    Without KEY: every complete group, and every damaged one (lost or torn zarr.json) fails.
    """
    from sa.cache import open_root
    from sa.cache.verify import VerifyFailed
    from sa.errors import DamagedError

    cache = open_root(root, read_only=True)
    cache.require_exists()
    keys = [cache.resolve(key)] if key else [i.key for i in cache.list() if i.status in ("complete", "damaged")]
    if not keys:
        console.print(f"No complete groups to verify under {cache.url}.")
        return
    failed: dict[str, dict[str, str]] = {}
    for k in keys:
        try:
            bad = cache.problems(k, progress=True)
        except DamagedError as exc:
            bad = {"metadata": getattr(exc, "reason", str(exc))}
        if bad:
            failed[k] = bad
            listed = ", ".join(f"{name} ({why})" for name, why in bad.items())
            console.print(f"[red]FAIL[/] {k}: {listed}", highlight=False)
        else:
            console.print(f"[green]ok[/]   {k}", highlight=False)
    if failed:
        names = "; ".join(f"{k}: {', '.join(f'{n} ({why})' for n, why in v.items())}" for k, v in failed.items())
        raise VerifyFailed(f"{len(failed)} group(s) failed verification ({names}); remove the group(s) with "
                           f"`sa cache rm KEY` and extract or pull them again, or re-import a good export.")


@app.command("rm")
@friendly
def rm_cmd(
    key: str = typer.Argument(..., help=KEY_HELP),
    root: Optional[str] = cache_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Remove even while a live writer holds the group's lock."),
) -> None:
    """Delete one group (asks first unless --yes)."""
    from sa.cache import open_root

    cache = open_root(root)
    full = cache.resolve(key)
    if not yes and not typer.confirm(f"Delete cache group {full} under {cache.url}?"):
        raise typer.Exit(1)
    cache.remove(full, force=force)
    console.print(f"Removed {full}.", highlight=False)


@app.command("export")
@friendly
def export_cmd(
    key: str = typer.Argument(..., help=KEY_HELP),
    out: Path = typer.Argument(..., help="HDF5 file to write, e.g. features.h5."),
    root: Optional[str] = cache_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a complete group to one HDF5 file (same arrays; manifest as the JSON attribute 'sa_manifest')."""
    from sa.cache.export import export_group

    path = export_group(root, key, out, overwrite=overwrite)
    console.print(f"Wrote {path}.", highlight=False)


@app.command("import")
@friendly
def import_cmd(
    file: Path = typer.Argument(..., help="HDF5 file written by `sa cache export`."),
    root: Optional[str] = cache_option(),
) -> None:
    """Restore a group from an HDF5 export; it is marked complete only if every digest matches."""
    from sa.cache.export import import_group

    group = import_group(file, root)
    console.print(f"Imported {group.key} into {group.root.url} ({group.n_rows:,} rows, {len(group.arrays)} arrays).", highlight=False)


def _report_copy(report: object, verb: str) -> None:
    """One line saying what a push/pull did."""
    if report.already_complete:
        console.print(f"{report.key} is already complete under {report.dest}; nothing to copy.", highlight=False)
        return
    resumed = f", {report.skipped} already there" if report.skipped else ""
    console.print(f"{verb} {report.key} to {report.dest}: {report.copied} file(s), {_size(report.nbytes)}{resumed}; "
                  f"digests verified.", highlight=False)


@app.command("push")
@friendly
def push_cmd(
    key: str = typer.Argument(..., help=KEY_HELP),
    dest: str = typer.Argument(..., help="Shared cache root to copy into: a folder, s3://bucket/path, gs://... (not HTTP)."),
    root: Optional[str] = cache_option(),
) -> None:
    """Copy a complete group from your cache to a shared root, verify its digests there, then mark it complete.

    An interrupted push resumes where it stopped; until it finishes the copy stays partial and nobody reads it.
    """
    from sa.cache.share import push

    _report_copy(push(key, dest, root=root, progress=True), "Pushed")


@app.command("pull")
@friendly
def pull_cmd(
    key: str = typer.Argument(..., help=KEY_HELP),
    src: str = typer.Argument(..., help="Shared cache root to copy from: a folder, https://..., s3://bucket/path, gs://..."),
    root: Optional[str] = cache_option(),
) -> None:
    """Copy a complete group from a shared root into your cache, verify its digests, then mark it complete.

    An interrupted pull resumes where it stopped; until it finishes the copy stays partial.
    """
    from sa.cache.share import pull

    report = pull(key, src, root=root, progress=True)
    _report_copy(report, "Pulled")


@app.command("reindex")
@friendly
def reindex_cmd(
    root_arg: Optional[str] = typer.Argument(None, metavar="[ROOT]", help=CACHE_HELP),
    root: Optional[str] = cache_option(),
) -> None:
    """Rebuild the lab index (ROOT/sa-index.json) from the groups themselves; run it where the root can be written.

    Damaged groups are left out of the index and named (exit status 1).
    """
    from sa.cache import open_root
    from sa.cache.index import INDEX_NAME, rebuild
    from sa.errors import DamagedError

    cache = open_root(root_arg or root)
    found = rebuild(cache)
    console.print(f"Wrote {cache.loc.display(INDEX_NAME)}: {len(found.complete)} complete group(s).", highlight=False)
    if found.damaged:
        raise DamagedError(_damaged_sentence(found.damaged, "left out of the index"))
