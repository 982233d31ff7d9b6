"""Make PyPI's torchvision importable beside a CPU-only torch (the CPU images).

PyPI's torchvision wheels are built against PyPI's CUDA torch: their C++ operators (nms,
roi_align, deform_conv2d: detection layers, which Confide never uses) link to libtorch_cuda and
cannot load with a CPU-only torch. torchvision then still registers fake kernels for those
operators at import, without the check it uses for its meta kernels, and the import fails with
"operator torchvision::nms does not exist". This applies that same check (register only when
the operators loaded) to torchvision's installed _meta_registrations.py, then proves that
torchvision and its ResNets import and run. With a CUDA torch, or operators that load, it
changes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

GUARD = '''

def _register_fake_if_ops(name):
    """torch.library.register_fake, only where torchvision's C++ operators loaded."""

    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(name)(fn)
        return fn

    return wrapper
'''


def main() -> int:
    if torch.version.cuda is not None:
        print("torchvision-cpu-fix: CUDA torch, nothing to do")
        return 0
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.origin is not None
    meta = Path(spec.origin).parent / "_meta_registrations.py"
    text = meta.read_text()
    if "_register_fake_if_ops" not in text:
        anchor = "import torchvision.extension  # noqa: F401\n"
        if anchor not in text:
            print(f"torchvision-cpu-fix: {meta} is not the layout this fix knows", file=sys.stderr)
            return 1
        text = text.replace(anchor, anchor + GUARD, 1)
        text = text.replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
        meta.write_text(text)
    import torchvision
    from torchvision.models import resnet18

    out = resnet18(num_classes=3).eval()(torch.zeros(2, 3, 32, 32))
    print(f"torchvision-cpu-fix: torchvision {torchvision.__version__} on torch {torch.__version__}: "
          f"operators loaded: {torchvision.extension._has_ops()}, resnet18 output {tuple(out.shape)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
