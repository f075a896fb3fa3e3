"""`sa decode` and `sa stream`: thin typer wrappers over sa.decode.offline and sa.decode.online."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sa.clikit import cache_option, console, data_option, friendly, images_option, layout_option, meta_option
from sa.decode import stream_cli


def decode_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `sa train`."),
    data: Path = data_option(),
    gallery: str = typer.Option(..., "--gallery", help="Cache key (or unique prefix) of the candidate images, extracted with the checkpoint's backbone."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Subject to decode (default: the checkpoint's)."),
    split: str = typer.Option("test", "--split", help="test, val or train."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Candidates per trial."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write predictions CSV (trial, true_id, id_1, score_1, ...)."),
    cache: Optional[str] = cache_option("Feature cache root of the gallery (default: $SA_CACHE, else the checkpoint's)."),
    layout: str = layout_option(), images: Optional[Path] = images_option(),
    meta: Optional[Path] = meta_option(),
) -> None:
    """Rank gallery images for the trials of a split: top-k image ids and cosine scores per trial."""
    from sa.decode.offline import decode_dataset

    pred = decode_dataset(checkpoint, data, gallery, subject=subject, split=split, top_k=top_k, root=cache,
                          layout=layout, image_root=images, meta=meta)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pred.to_csv(out)
        console.print(f"{len(pred.ids)} trials -> {out}")
    else:
        for t in range(min(len(pred.ids), 10)):
            console.print(f"{t}: {pred.true_ids[t]} -> " + ", ".join(f"{i} ({s:.2f})" for i, s in zip(pred.ids[t], pred.scores[t])))
    k = pred.ids.shape[1]
    if pred.accuracy(1) is not None:
        console.print(f"top-1 {pred.accuracy(1):.1f} %, top-{k} {pred.accuracy(k):.1f} % over the "
                      f"{int(pred.in_gallery.sum())} trials whose image is in the gallery.")


def register(app: typer.Typer) -> None:
    """Add `sa decode` and `sa stream` to the root app."""
    app.command("decode")(friendly(decode_cmd))
    stream_cli.register(app)
