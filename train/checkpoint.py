"""One file per trained run: weights, training config, and how to prepare new data for it (safetensors).

The file holds the AlignModel's state dict plus the z-score statistics as
tensors, and as JSON metadata the TrainConfig, encoder input shape, feature
width, channel names, time points, window, the cache group (key, root, pool,
layer) and the run's metrics. safetensors keeps loading free of pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sa.errors import SAError

FORMAT = "sa-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A trained run ready to decode: the model and everything needed to feed it new trials."""

    model: Any  # sa.train.batched.AlignModel, eval mode, CPU
    config: dict  # TrainConfig fields
    encoder: str
    n_channels: int
    n_times: int
    feat_dim: int
    ch_names: list[str]
    times: list[float]
    sfreq: float
    window: list[float] | None
    average_reps: bool
    zscore_mean: np.ndarray | None
    zscore_std: np.ndarray | None
    cache_key: str
    cache_root: str
    pool: str
    layer: str
    seed: int
    meta: dict = field(default_factory=dict)  # dataset, subject, fold, metrics

    @property
    def array(self) -> str:
        """The cache array this run aligns with."""
        from sa.train.features import array_name

        return array_name(self.pool, self.layer)

    @property
    def backbone_key(self) -> str:
        return self.cache_key.split("/", 1)[-1]


def check_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """SAError unless a checkpoint can be written at `path`: not a folder, its folder creatable and writable.

    Called before training, so a bad --out costs nothing; the probe file is removed again.
    """
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise SAError(f"--out {path} is a folder; give the checkpoint file to write, e.g. {path / 'model.safetensors'}.")
    if path.name in ("", ".", ".."):
        raise SAError(f"--out {path} names no file; give the checkpoint file to write, e.g. model.safetensors.")
    if path.parent.exists() and not path.parent.is_dir():
        raise SAError(f"--out {path}: {path.parent} is a file, not a folder; choose another place for the checkpoint.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".sa-probe-", dir=path.parent)
    os.close(fd)
    os.unlink(probe)
    return path


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write the checkpoint as one .safetensors file (parent folders created); returns its path."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    if ckpt.zscore_mean is not None and ckpt.zscore_std is not None:
        tensors["zscore.mean"] = torch.as_tensor(np.asarray(ckpt.zscore_mean, dtype=np.float32))
        tensors["zscore.std"] = torch.as_tensor(np.asarray(ckpt.zscore_std, dtype=np.float32))
    meta = {k: v for k, v in asdict(ckpt).items() if k not in ("model", "zscore_mean", "zscore_std")}
    meta["format"], meta["version"] = FORMAT, VERSION
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"sa": json.dumps(meta, default=_jsonable)})
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint and rebuild its model (eval mode, CPU)."""
    from safetensors import safe_open

    from sa.train.trainer import RunSpec, TrainConfig, plain_model

    path = Path(path)
    if not path.is_file():
        raise SAError(f"checkpoint {path} does not exist; train one with `sa train ... --out {path}`.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("sa", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise SAError(f"{path} is not a readable sa checkpoint ({type(exc).__name__}: {exc}); "
                      "write it again with `sa train`.") from None
    if meta.get("format") != FORMAT:
        raise SAError(f"{path} is not an sa checkpoint (no '{FORMAT}' metadata); write it with `sa train`.")
    fields = {k: v for k, v in meta.items() if k not in ("format", "version")}
    cfg = TrainConfig(**{k: (tuple(v) if k == "ks" else v) for k, v in fields["config"].items()})
    model = plain_model(RunSpec(fields["layer"], fields["seed"], fields["encoder"]), cfg,
                        (fields["n_channels"], fields["n_times"]), fields["feat_dim"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SAError(f"{path}: the weights do not fit encoder {fields['encoder']!r} ({str(exc).splitlines()[0]}); "
                      "the file is damaged or from another sa version.") from None
    model.eval()
    mean = tensors.get("zscore.mean")
    std = tensors.get("zscore.std")
    return Checkpoint(model=model, zscore_mean=None if mean is None else mean.numpy(),
                      zscore_std=None if std is None else std.numpy(), **fields)
