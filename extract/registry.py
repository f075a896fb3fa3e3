"""Backbone names: short aliases for the paper's models and generic `library:ARCH[:TAG]` names.

A name resolves to a :class:`BackboneSpec` without importing any model library,
so `sa backbones` and error messages stay fast.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional

from sa.errors import SAError

SOURCES = ("open_clip", "timm", "torchvision", "hf")


@dataclass(frozen=True)
class BackboneSpec:
    """What to build: the library (`source`), its architecture name and the pretrained tag (None = library default)."""

    name: str  # the name the user gave (alias or generic), used as the human-readable key prefix
    source: str  # "open_clip" | "timm" | "torchvision" | "hf"
    arch: str  # open_clip model name, timm model name (without tag), torchvision model name, hf repo id or folder
    pretrained: Optional[str] = None  # open_clip tag, timm tag ("lvd142m"), torchvision weights enum ("IMAGENET1K_V1"), hf revision
    description: str = ""

    @property
    def generic(self) -> str:
        """The generic `source:arch[:tag]` spelling of this backbone."""
        if self.source == "timm":
            return f"timm:{self.arch}" + (f".{self.pretrained}" if self.pretrained else "")
        if self.source == "hf":
            return f"hf:{self.arch}" + (f"@{self.pretrained}" if self.pretrained else "")
        return f"{self.source}:{self.arch}" + (f":{self.pretrained}" if self.pretrained else "")

    @property
    def key_name(self) -> str:
        """A filesystem-safe version of `name` for the cache key prefix."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name).strip("-")


def _oc(alias: str, arch: str, tag: str, desc: str) -> BackboneSpec:
    return BackboneSpec(alias, "open_clip", arch, tag, desc)


def _timm(alias: str, arch: str, tag: str, desc: str) -> BackboneSpec:
    return BackboneSpec(alias, "timm", arch, tag, desc)


def _hf(alias: str, repo: str, desc: str) -> BackboneSpec:
    return BackboneSpec(alias, "hf", repo, None, desc)


ALIASES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        _oc("clip-rn50", "RN50", "openai", "OpenAI CLIP ResNet-50"),
        _oc("clip-rn101", "RN101", "openai", "OpenAI CLIP ResNet-101"),
        _oc("clip-vit-b16", "ViT-B-16", "openai", "OpenAI CLIP ViT-B/16"),
        _oc("clip-vit-b32", "ViT-B-32", "openai", "OpenAI CLIP ViT-B/32"),
        _oc("clip-vit-l14", "ViT-L-14", "openai", "OpenAI CLIP ViT-L/14"),
        _oc("clip-vit-h14", "ViT-H-14", "laion2b_s32b_b79k", "OpenCLIP ViT-H/14 (LAION-2B)"),
        _oc("clip-vit-g14", "ViT-g-14", "laion2b_s34b_b88k", "OpenCLIP ViT-g/14 (LAION-2B)"),
        _oc("clip-vit-bigg14", "ViT-bigG-14", "laion2b_s39b_b160k", "OpenCLIP ViT-bigG/14 (LAION-2B)"),
        _oc("eva02-e14", "EVA02-E-14", "laion2b_s4b_b115k", "EVA-02-CLIP-E/14 (LAION-2B)"),
        _timm("dinov2-s", "vit_small_patch14_dinov2", "lvd142m", "DINOv2 ViT-S/14"),
        _timm("dinov2-b", "vit_base_patch14_dinov2", "lvd142m", "DINOv2 ViT-B/14"),
        _timm("dinov2-l", "vit_large_patch14_dinov2", "lvd142m", "DINOv2 ViT-L/14"),
        _timm("dinov2-g", "vit_giant_patch14_dinov2", "lvd142m", "DINOv2 ViT-g/14"),
        _timm("dinov2-s-reg", "vit_small_patch14_reg4_dinov2", "lvd142m", "DINOv2 ViT-S/14 with 4 registers"),
        _timm("dinov2-b-reg", "vit_base_patch14_reg4_dinov2", "lvd142m", "DINOv2 ViT-B/14 with 4 registers"),
        _timm("dinov2-l-reg", "vit_large_patch14_reg4_dinov2", "lvd142m", "DINOv2 ViT-L/14 with 4 registers"),
        _timm("dinov2-g-reg", "vit_giant_patch14_reg4_dinov2", "lvd142m", "DINOv2 ViT-g/14 with 4 registers"),
        _timm("siglip-b16", "vit_base_patch16_siglip_224", "webli", "SigLIP ViT-B/16 (WebLI), no CLS token"),
        _hf("internvit-6b", "OpenGVLab/InternViT-6B-448px-V2_5", "InternViT-6B 448px V2.5 (HF remote code: --trust-remote-code)"),
        # past the paper (frontier): DINOv3 (class + 4 storage tokens, RoPE), PE-Core and SigLIP2 (CLIP-style towers with
        # their own image embedding), AIMv2 (no class token; final = timm's pooled pre-logits)
        _timm("dinov3-s", "vit_small_patch16_dinov3", "lvd1689m", "DINOv3 ViT-S/16 (LVD-1689M), 4 storage tokens"),
        _timm("dinov3-b", "vit_base_patch16_dinov3", "lvd1689m", "DINOv3 ViT-B/16 (LVD-1689M)"),
        _timm("dinov3-l", "vit_large_patch16_dinov3", "lvd1689m", "DINOv3 ViT-L/16 (LVD-1689M)"),
        _timm("dinov3-hplus", "vit_huge_plus_patch16_dinov3", "lvd1689m", "DINOv3 ViT-H+/16 (LVD-1689M)"),
        _timm("dinov3-7b", "vit_7b_patch16_dinov3", "lvd1689m", "DINOv3 ViT-7B/16 (LVD-1689M)"),
        _oc("pe-core-b16", "PE-Core-B-16", "meta", "Perception Encoder Core B/16 (224)"),
        _oc("pe-core-l14", "PE-Core-L-14-336", "meta", "Perception Encoder Core L/14 (336)"),
        _oc("pe-core-g14", "PE-Core-bigG-14-448", "meta", "Perception Encoder Core G/14 (448)"),
        _oc("siglip2-b16", "ViT-B-16-SigLIP2", "webli", "SigLIP 2 ViT-B/16 (224), no CLS token"),
        _oc("siglip2-so400m14", "ViT-SO400M-14-SigLIP2", "webli", "SigLIP 2 SO400M/14 (224), no CLS token"),
        _oc("siglip2-g16", "ViT-gopt-16-SigLIP2-384", "webli", "SigLIP 2 g-opt/16 (384), no CLS token"),
        _timm("aimv2-l", "aimv2_large_patch14_224", "apple_pt", "AIMv2 L/14 (224)"),
        _timm("aimv2-h", "aimv2_huge_patch14_224", "apple_pt", "AIMv2 H/14 (224)"),
        _timm("aimv2-1b", "aimv2_1b_patch14_224", "apple_pt", "AIMv2 1B/14 (224)"),
        _timm("aimv2-3b", "aimv2_3b_patch14_224", "apple_pt", "AIMv2 3B/14 (224)"),
    ]
}


# Blocks, width and parameters of every alias, as its meta-device build gives them, so that `sa backbones`
# lists them at once (building DINOv3-7B or EVA-02-E even on the meta device takes seconds each).
# tests/test_backbones.py::test_alias_shapes_equal_their_meta_build re-derives every row.
ALIAS_SHAPES: dict[str, tuple[int, int, int]] = {
    "clip-rn50": (4, 2048, 38316896),
    "clip-rn101": (4, 2048, 56259936),
    "clip-vit-b16": (12, 768, 86192640),
    "clip-vit-b32": (12, 768, 87849216),
    "clip-vit-l14": (24, 1024, 303966208),
    "clip-vit-h14": (32, 1280, 632076800),
    "clip-vit-g14": (40, 1408, 1012645632),
    "clip-vit-bigg14": (48, 1664, 1844907264),
    "eva02-e14": (64, 1792, 4350556928),
    "dinov2-s": (12, 384, 22056192),
    "dinov2-b": (12, 768, 86579712),
    "dinov2-l": (24, 1024, 304367616),
    "dinov2-g": (40, 1536, 1136479232),
    "dinov2-s-reg": (12, 384, 22057344),
    "dinov2-b-reg": (12, 768, 86582016),
    "dinov2-l-reg": (24, 1024, 304370688),
    "dinov2-g-reg": (40, 1536, 1136483840),
    "siglip-b16": (12, 768, 92884224),
    "internvit-6b": (45, 3200, 5536496000),
    "dinov3-s": (12, 384, 21586944),
    "dinov3-b": (12, 768, 85641216),
    "dinov3-l": (24, 1024, 303079424),
    "dinov3-hplus": (32, 1280, 840509440),
    "dinov3-7b": (40, 4096, 6716030976),
    "pe-core-b16": (12, 768, 93673984),
    "pe-core-l14": (24, 1024, 317152256),
    "pe-core-g14": (50, 1536, 1882033920),
    "siglip2-b16": (12, 768, 92884224),
    "siglip2-so400m14": (27, 1152, 427680704),
    "siglip2-g16": (40, 1536, 1163659776),
    "aimv2-l": (24, 1024, 309197824),
    "aimv2-h": (24, 1536, 680851968),
    "aimv2-1b": (24, 2048, 1234958336),
    "aimv2-3b": (24, 3072, 2720658432),
}


def library_models(source: str) -> list[str]:
    """Every architecture name the library itself knows (imports it; used for suggestions)."""
    from sa._compat import ensure_torchvision

    tv = ensure_torchvision()
    if source == "open_clip":
        import open_clip

        return list(open_clip.list_models())
    if source == "timm":
        import timm

        return list(timm.list_models())
    return list(tv.models.list_models())


def _unknown(name: str, candidates: list[str], what: str) -> SAError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return SAError(f"Unknown {what} {name!r}.{hint} Run `sa backbones` for the list.")


def resolve(name: str, *, check: bool = True) -> BackboneSpec:
    """Turn an alias or `open_clip:ARCH[:TAG]` / `timm:NAME[.TAG]` / `torchvision:NAME[:WEIGHTS]` into a spec.

    With `check`, generic names are checked against the library's model list (the
    error suggests the closest names, as it does for unknown aliases).
    """
    if name in ALIASES:
        return ALIASES[name]
    if ":" not in name:
        generic = [f"{s}:" for s in SOURCES]
        raise _unknown(name, list(ALIASES) + generic, "backbone")
    source, _, rest = name.partition(":")
    if source not in SOURCES:
        raise _unknown(source, list(SOURCES), "backbone library")
    if not rest:
        raise SAError(f"Backbone {name!r} names no architecture; write e.g. {source}:ARCH.")
    if source == "hf":
        return _resolve_hf(name, rest)
    if source == "timm":
        arch, _, tag = rest.partition(".")
    else:
        arch, _, tag = rest.partition(":")
    spec = BackboneSpec(name, source, arch, tag or None, f"{source} {rest}")
    if check:
        known = library_models(source)
        if arch not in known:
            raise _unknown(arch, known, f"{source} architecture")
    return spec


def _resolve_hf(name: str, rest: str) -> BackboneSpec:
    """`hf:OWNER/NAME[@REVISION]` or `hf:FOLDER` (a local save_pretrained folder); the hub is not asked."""
    import os

    repo, _, rev = rest.partition("@") if not os.path.isdir(rest) else (rest, "", "")
    parts = repo.split("/")
    if not os.path.isdir(os.path.expanduser(repo)) and (len(parts) != 2 or not all(parts)):
        raise SAError(f"Backbone {name!r} is neither a local folder nor a Hugging Face repo id; write "
                      f"hf:OWNER/NAME[@REVISION] or hf:PATH/TO/FOLDER.")
    return BackboneSpec(name, "hf", repo, rev or None, f"transformers {rest}")
