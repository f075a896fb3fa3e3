"""Peak host memory of loading a giant hf: backbone, measured on a scaled-down InternViT-6B (prints figures).

InternViT-6B is 45 layers of 3200; this builds the same layer shape (transformers' native InternVL vision
tower: qk RMS-norm, MLP 12800, 448 px) with fewer layers, saves it in bf16 with save_pretrained, and loads
it through sa's real `hf:` path (`load_backbone(..., dtype="bf16")`) in a fresh process, recording the peak
resident set size above the process's baseline after imports. The ratio peak / checkpoint size is what a
6B load costs in host memory: transformers builds on the meta device and fills each tensor from the
memory-mapped safetensors file, so no full fp32 copy is ever made. On a GPU (`--device cuda`, with
accelerate installed) tensors go straight from the file to the device.

    python bench/giant.py [--layers 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
import psutil
from sa._compat import ensure_torchvision; ensure_torchvision()
import transformers, torch
from sa.extract.backbones import load_backbone
proc = psutil.Process()
base = peak = proc.memory_info().rss  # after imports (ru_maxrss would carry the parent's peak across exec)
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.005)
w = threading.Thread(target=watch); w.start()
t = time.time()
bb = load_backbone("hf:" + sys.argv[1], device=sys.argv[2], dtype="bf16")
took = time.time() - t
done = True; w.join()
peak = max(peak, proc.memory_info().rss)
print(json.dumps({"base_mib": base / 2**20, "peak_mib": peak / 2**20, "load_s": took, "params": bb.params,
                  "dtype": str(next(bb.model.parameters()).dtype)}))
"""


def save_scaled(folder: Path, layers: int) -> int:
    """A random InternViT-6B-shaped tower with `layers` layers saved in bf16 (+ its processor); returns its size in bytes."""
    from sa._compat import ensure_torchvision

    ensure_torchvision()
    import torch
    import transformers as T

    cfg = T.InternVLVisionConfig(hidden_size=3200, intermediate_size=12800, num_hidden_layers=layers,
                                 num_attention_heads=25, image_size=[448, 448], patch_size=[14, 14], use_qk_norm=True,
                                 norm_type="rms_norm", attention_bias=False, use_mean_pooling=True)
    with torch.device("cpu"):
        model = T.InternVLVisionModel(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    T.CLIPImageProcessor(size={"shortest_edge": 448}, crop_size={"height": 448, "width": 448}).save_pretrained(folder)
    del model
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="layers of the scaled-down InternViT-6B (the real one has 45)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "internvit-scaled"
        size = save_scaled(folder, args.layers)
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), args.device], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    ckpt = size / 2**20
    extra = res["peak_mib"] - res["base_mib"]
    print(f"scaled InternViT-6B: {args.layers} of 45 layers, {res['params'] / 1e6:,.0f} M parameters, "
          f"bf16 checkpoint {ckpt:,.0f} MiB, loaded as {res['dtype']} on {args.device} in {res['load_s']:.1f} s")
    print(f"peak host RSS above baseline: {extra:,.0f} MiB = {extra / ckpt:.2f} x the checkpoint "
          f"(baseline after imports {res['base_mib']:,.0f} MiB)")
    if args.device == "cpu":
        print("on CPU the weights themselves live in host memory, so ~1.0 x is the floor; on CUDA they do not.")


if __name__ == "__main__":
    main()
