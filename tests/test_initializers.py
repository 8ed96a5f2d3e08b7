"""Tests for spark_torch.initializers: validation, shapes, reproducibility, distributions."""

import ast
import json
import pathlib

import numpy as np
import pytest

from spark_torch.initializers import (
    INITIALIZERS,
    Constant,
    Initializer,
    Normal,
    Uniform,
    initializer_from_dict,
)

ALL = [Constant(-65.0), Uniform(-1.0, 2.0), Normal(0.5, 3.0)]


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("init", ALL, ids=repr)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (0, 4)])
def test_shape_and_dtype(init, shape):
    out = init(shape, rng())
    assert out.shape == shape
    assert out.dtype == np.float64
    assert out.flags.writeable


@pytest.mark.parametrize("init", ALL, ids=repr)
def test_same_seed_same_draw(init):
    np.testing.assert_array_equal(init((4, 5), rng(7)), init((4, 5), rng(7)))


@pytest.mark.parametrize("init", [Uniform(0.0, 1.0), Normal(0.0, 1.0)], ids=repr)
def test_different_seed_different_draw(init):
    assert not np.array_equal(init((100,), rng(1)), init((100,), rng(2)))


def test_constant_values():
    np.testing.assert_array_equal(Constant(3)((2, 2), rng()), np.full((2, 2), 3.0))


def test_uniform_within_bounds():
    x = Uniform(-70.0, -60.0)((10_000,), rng())
    assert x.min() >= -70.0 and x.max() < -60.0
    assert x.max() - x.min() > 9.0  # actually spread out


def test_normal_moments():
    x = Normal(-65.0, 5.0)((200_000,), rng(3))
    assert abs(x.mean() - (-65.0)) < 0.05
    assert abs(x.std() - 5.0) < 0.05


def test_normal_zero_std_is_constant():
    np.testing.assert_array_equal(Normal(2.0, 0.0)((3,), rng()), np.full(3, 2.0))


def test_uniform_low_not_below_high():
    with pytest.raises(ValueError, match=r"Uniform: `low` \(=2\.0\) must be < `high` \(=1\.0\)"):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="`low`"):
        Uniform(1.0, 1.0)


def test_normal_negative_std():
    with pytest.raises(ValueError, match=r"Normal: `std` \(=-1\.0\) must be >= 0"):
        Normal(0.0, -1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_params(bad):
    with pytest.raises(ValueError, match=r"Constant: `value` \(=.*\) must be finite"):
        Constant(bad)
    with pytest.raises(ValueError, match="`mean`.*finite"):
        Normal(bad, 1.0)


@pytest.mark.parametrize("bad", [True, "1.0", None, 1 + 2j, [1.0], np.array([1.0])])
def test_wrong_param_types(bad):
    with pytest.raises(TypeError, match=r"Uniform: `low` must be a real number.*got"):
        Uniform(bad, 5.0)
    with pytest.raises(TypeError, match="`std`"):
        Normal(0.0, bad)


def test_params_stored_as_float():
    u = Uniform(np.int64(1), 2)
    assert type(u.low) is float and type(u.high) is float


def test_frozen():
    with pytest.raises(Exception):
        Constant(1.0).value = 2.0


def test_call_rejects_bad_rng_and_shape():
    with pytest.raises(TypeError, match="rng"):
        Constant(1.0)((2,), 0)
    with pytest.raises(ValueError, match="shape"):
        Constant(1.0)((-1,), rng())


@pytest.mark.parametrize("init", ALL, ids=repr)
def test_dict_round_trip(init):
    d = init.to_dict()
    assert d["initializer"] == init.name
    assert initializer_from_dict(json.loads(json.dumps(d))) == init


def test_registry_names():
    assert {"constant", "uniform", "normal"} <= set(INITIALIZERS)
    assert INITIALIZERS["uniform"] is Uniform


def test_from_dict_errors():
    with pytest.raises(ValueError, match="unknown initializer 'beta'.*valid names"):
        initializer_from_dict({"initializer": "beta"})
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['scale'\]"):
        initializer_from_dict({"initializer": "normal", "mean": 0.0, "scale": 1.0})
    with pytest.raises(TypeError, match="initializer"):
        initializer_from_dict({"mean": 0.0})


def test_subclass_registers():
    import dataclasses
    from typing import ClassVar

    @dataclasses.dataclass(frozen=True)
    class Zeros(Initializer):
        name: ClassVar[str] = "test_zeros"

        def _draw(self, shape, rng):
            return np.zeros(shape)

    try:
        assert initializer_from_dict({"initializer": "test_zeros"}) == Zeros()
        assert Zeros()((2,), rng()).shape == (2,)
    finally:
        INITIALIZERS.pop("test_zeros")


@pytest.mark.parametrize("module", ["initializers.py", "config.py", "presets.py"])
def test_no_torch_or_jax_import(module):
    """These modules must stay pure numpy + stdlib."""
    path = pathlib.Path(__file__).parents[1] / "spark_torch" / module
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "jax", "jaxlib"}


def test_docstring_examples():
    import doctest

    import spark_torch.initializers as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
