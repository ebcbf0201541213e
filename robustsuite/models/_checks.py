"""Small validators shared by the model builders; each error names the option and what is allowed."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from ..errors import ConfigError


def positive_int(field: str, value: object) -> int:
    """``value`` as an int >= 1 (bools and floats are rejected, not truncated; numpy ints are fine)."""
    if not is_int(value) or value < 1:
        raise ConfigError(f"{field}: expected an integer >= 1, got {value!r}")
    return int(value)


def is_int(value: object) -> bool:
    """True for Python and numpy integers, False for bools (a YAML ``true`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_float(field: str, value: object) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(f"{field}: expected a finite number > 0, got {value!r}")
    return float(value)


def int_tuple(field: str, value: object, allow_empty: bool = True) -> tuple[int, ...]:
    """A sequence of ints >= 1 (or one int) as a tuple."""
    if is_int(value):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(f"{field}: expected a sequence of integers >= 1, got {value!r}")
    if not allow_empty and len(value) == 0:
        raise ConfigError(f"{field}: expected at least one integer, got {value!r}")
    return tuple(positive_int(f"{field}[{i}]", v) for i, v in enumerate(value))


def boolean(field: str, value: object) -> bool:
    """``value`` as a bool (only True/False; no truthy strings)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    return value


def scaled(base: int, width: float) -> int:
    """Channel count ``base * width`` rounded, at least 1."""
    return max(1, int(round(base * width)))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a convolution: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def check_spatial(name: str, in_shape: tuple[int, int, int], sizes: tuple[int, int],
                  minimum: str) -> None:
    """Raise a ConfigError when a layer would produce an empty feature map."""
    if min(sizes) < 1:
        raise ConfigError(f"in_shape: {tuple(in_shape)} is too small for {name!r} (a feature map "
                          f"would be {sizes[0]}x{sizes[1]}); it needs {minimum}")
