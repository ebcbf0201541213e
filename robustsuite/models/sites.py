"""Named places in the residual models where the stochastic defenses plug in their modules.

The zoo builds no noise layers. It marks where they go (``stochastic.md``):

- :class:`Site`, an identity module, after the first convolution (+BN) before its ReLU
  (``model.post_stem``) and at the output of every residual block, after the addition and before
  the block's final ReLU (``block.post_add``). Learn2Perturb and PNI replace these.
- the activations of every residual block are separate ``nn.ReLU`` modules named in the block's
  ``ACTIVATIONS`` (``act1``, ``act2``); ANIS2 replaces them by its stochastic ReLU.

Use :func:`noise_sites` and :func:`block_activations` to list the qualified names, and
:func:`replace_module` to swap one in place::

    for name in noise_sites(model):
        replace_module(model, name, MyNoise(...))

A model whose sites are still identities is deterministic and bounds like any other.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError


class Site(nn.Identity):
    """Identity placeholder marking an insertion point; ``role`` says which (``"stem"``/``"block"``).

    Shapes: any input, returned unchanged.
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def extra_repr(self) -> str:
        return f"role={self.role!r}"


class ResidualBlock(nn.Module):
    """Base class of the residual blocks; ``ACTIVATIONS`` names the block's activation submodules."""

    ACTIVATIONS: tuple[str, ...] = ()


def noise_sites(model: nn.Module, role: str | None = None) -> list[str]:
    """Qualified names of the :class:`Site` placeholders of ``model`` (optionally of one ``role``),
    in forward order (stem first, then each block)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, Site) and (role is None or m.role == role)]


def block_activations(model: nn.Module) -> list[str]:
    """Qualified names of the activation modules inside residual blocks, in forward order."""
    names = []
    for block_name, block in model.named_modules():
        if isinstance(block, ResidualBlock):
            prefix = f"{block_name}." if block_name else ""
            names.extend(prefix + act for act in block.ACTIVATIONS)
    return names


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Replace the submodule at dotted ``name`` by ``module``; return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(child)
    except AttributeError as e:
        raise ConfigError(f"name: {name!r} is not a submodule of {type(model).__name__}") from e
    setattr(parent, child, module)
    return old
