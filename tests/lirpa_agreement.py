"""Margin lower bounds of fixed models under the installed auto_LiRPA, for comparing releases.

``tests/test_lirpa071_subprocess.py`` runs :func:`main` under auto_LiRPA 0.7.1 (in a subprocess)
and compares its output with :func:`margin_table` computed under 0.3 in the test process.
"""
from __future__ import annotations

import sys

import torch

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
SHAPE = (1, 8, 8)


def _models() -> dict[str, torch.nn.Module]:
    from robustsuite.models import build

    out = {}
    for name, opts in (("mlp", {"hidden": (32, 32)}), ("cnn_small", {"width": 1, "linear": 64}),
                       ("resnet_small", {"width": 4})):
        torch.manual_seed(7)
        model = build(name, SHAPE, 10, **opts)
        model.train()
        with torch.no_grad():  # BatchNorm statistics that are not the initial ones
            model(torch.rand(32, *SHAPE))
        out[name] = model.eval()
    return out


def margin_table() -> dict[str, torch.Tensor]:
    """``{"model/method": margin lower bounds (4, 9)}`` at L-inf 0.03, float32, CPU."""
    from robustsuite import LinfBall
    from robustsuite.certify import Verifier

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *SHAPE, generator=g)
    out = {}
    for name, model in _models().items():
        with torch.no_grad():
            y = model(x).argmax(1)
        for method in METHODS:
            v = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=10)
            out[f"{name}/{method}"] = v.margin_bounds(x, y, LinfBall(0.03)).detach()
    return out


def main(path: str) -> None:
    from robustsuite.certify.lirpa import VERSION

    torch.save({"version": VERSION, "bounds": margin_table()}, path)


if __name__ == "__main__":
    main(sys.argv[1])
