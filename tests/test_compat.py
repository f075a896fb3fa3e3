"""The torchvision compatibility step: applied only on the nms failure, and it makes timm/open_clip importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_plain_import_state_and_fix_in_fresh_process():
    # In a fresh interpreter: does a plain import fail the known way here? Then ensure_torchvision
    # must apply the fix; otherwise it must leave torchvision alone.
    out = _run(
        """
        import importlib, sys
        try:
            import torchvision
            plain = "ok"
        except RuntimeError as e:
            plain = "nms" if "torchvision::nms" in str(e) else "other"
            for m in [m for m in sys.modules if m.startswith("torchvision")]:
                del sys.modules[m]
        import sa._compat as c
        tv = c.ensure_torchvision()
        print(plain, c.applied, tv.__name__)
        """
    )
    plain, applied, name = out.split()
    assert name == "torchvision"
    assert plain in {"ok", "nms"}
    assert applied == ("True" if plain == "nms" else "False")


def test_timm_and_open_clip_work_after_fix():
    out = _run(
        """
        from sa._compat import ensure_torchvision
        ensure_torchvision()
        import torch, timm, open_clip
        from torchvision.transforms import functional as F
        m = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
        with torch.no_grad():
            y = m(torch.zeros(1, 3, 64, 64))
        print(tuple(y.shape), hasattr(open_clip, "create_model"))
        """
    )
    assert out == "(1, 512) True"


def test_other_import_errors_are_not_swallowed(monkeypatch):
    import importlib

    import sa._compat as c

    def boom(name):
        raise RuntimeError("something unrelated")

    monkeypatch.setattr(importlib, "import_module", boom)
    try:
        c.ensure_torchvision()
    except RuntimeError as exc:
        assert "unrelated" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("ensure_torchvision swallowed an unrelated error")
