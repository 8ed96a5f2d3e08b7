"""Tests for spark_torch.config.IzhikevichSomaConfig."""

import dataclasses
import json

import numpy as np
import pytest

from spark_torch.config import SCHEMES, V_LIMIT, IzhikevichSomaConfig as Config
from spark_torch.initializers import Constant, Normal, Uniform

MODEL = Config.MODEL_FIELDS

# The model's fields: field -> (symbol, unit, default), Spark's names and defaults
SPEC_TABLE = {
    "potential_rest": ("v_r", "mV", -65.0),
    "potential_reset": ("c", "mV", -65.0),
    "resistance": ("R", "GΩ", 0.1),
    "threshold": ("v_pk", "mV", 30.0),
    "recovery_timescale": ("a", "1/ms", 0.02),
    "recovery_sensitivity": ("b", "—", 0.2),
    "recovery_update": ("d", "mV/ms", 2.0),
    "dt": ("dt", "ms", 1.0),
}


# ---- defaults, metadata -------------------------------------------------------------

def test_defaults_equal_spec_table():
    cfg = Config()
    for name, (_, _, default) in SPEC_TABLE.items():
        value = getattr(cfg, name)
        assert type(value) is float and value == default, name
    assert cfg.scheme == "euler" and cfg.seed == 0
    assert SCHEMES == ("euler", "izhikevich2003")


def test_model_fields_order():
    assert MODEL == ("potential_rest", "potential_reset", "resistance", "threshold",
                     "recovery_timescale", "recovery_sensitivity", "recovery_update")
    assert [f.name for f in dataclasses.fields(Config)] == [*MODEL, "dt", "scheme", "seed"]


def test_field_info_has_unit_and_description_for_every_field():
    info = Config.field_info()
    assert list(info) == [f.name for f in dataclasses.fields(Config)]
    for name, entry in info.items():
        assert set(entry) == {"unit", "symbol", "description", "default"}, name
        assert isinstance(entry["unit"], str) and entry["unit"], name
        assert isinstance(entry["description"], str) and entry["description"], name
        assert "\n" not in entry["description"]
    for name, (symbol, unit, default) in SPEC_TABLE.items():
        assert (info[name]["symbol"], info[name]["unit"], info[name]["default"]) == (
            symbol, unit, default)


# ---- overrides, merge, immutability ------------------------------------------------

def test_constructor_overrides():
    cfg = Config(recovery_update=8, scheme="izhikevich2003", dt=0.5, seed=3)
    assert cfg.recovery_update == 8.0 and type(cfg.recovery_update) is float
    assert (cfg.scheme, cfg.dt, cfg.seed) == ("izhikevich2003", 0.5, 3)


def test_merge_returns_new_config_and_keeps_original():
    base = Config()
    new = base.merge(recovery_update=8.0, potential_reset=-55.0)
    assert (new.recovery_update, new.potential_reset) == (8.0, -55.0)
    assert base == Config()
    assert new == Config(recovery_update=8.0, potential_reset=-55.0)


def test_merge_validates():
    with pytest.raises(ValueError, match="`dt` \\(=0.0\\)"):
        Config().merge(dt=0.0)


def test_config_is_immutable():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 10.0


def test_dataclasses_replace_works():
    assert dataclasses.replace(Config(), seed=5) == Config(seed=5)


# ---- arrays, torch, jax ------------------------------------------------------------

@pytest.mark.parametrize("value", [[-70.0, -60.0], (1, 2), np.array([1.5, 2.5], np.float32)])
def test_array_values_stored_read_only_float64(value):
    cfg = Config(recovery_update=value)
    assert isinstance(cfg.recovery_update, np.ndarray)
    assert cfg.recovery_update.dtype == np.float64
    assert not cfg.recovery_update.flags.writeable
    np.testing.assert_array_equal(cfg.recovery_update, np.asarray(value, dtype=np.float64))


def test_array_value_is_copied():
    src = np.array([1.0, 2.0])
    cfg = Config(recovery_update=src)
    src[0] = 100.0
    assert cfg.recovery_update[0] == 1.0


def test_numpy_scalars_accepted():
    cfg = Config(threshold=np.float32(25.0), seed=np.int64(4))
    assert cfg.threshold == 25.0 and type(cfg.threshold) is float
    assert cfg.seed == 4 and type(cfg.seed) is int


def test_torch_tensor_values_accepted():
    torch = pytest.importorskip("torch")
    t = torch.tensor([0.02, 0.1], requires_grad=True)
    cfg = Config(recovery_timescale=t, recovery_update=torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
    assert cfg.recovery_timescale.dtype == np.float64
    np.testing.assert_allclose(cfg.recovery_timescale, [0.02, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(cfg.recovery_update, [1.0, 2.0])
    with pytest.raises(TypeError, match="`resistance`.*Tensor"):
        Config(resistance=torch.tensor([True, False]))


def test_jax_array_values_accepted():
    jnp = pytest.importorskip("jax.numpy")
    cfg = Config(threshold=jnp.asarray([20.0, 30.0]))
    assert isinstance(cfg.threshold, np.ndarray) and cfg.threshold.dtype == np.float64
    np.testing.assert_array_equal(cfg.threshold, [20.0, 30.0])


# ---- validation: one test per rule ---------------------------------------------------

@pytest.mark.parametrize("name", MODEL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scalar(name, bad):
    with pytest.raises(ValueError, match=f"`{name}` \\(={bad!r}\\) must be finite"):
        Config(**{name: bad})


def test_non_finite_inside_array():
    with pytest.raises(ValueError, match=r"`recovery_update` must be finite.*\(1,\) has nan"):
        Config(recovery_update=[1.0, float("nan")])


def test_non_finite_initializer_param():
    bad = Normal(0.0, 1.0)
    object.__setattr__(bad, "mean", float("inf"))  # bypass the initializer's own check
    with pytest.raises(ValueError, match="`recovery_update`.*`mean` \\(=inf\\) must be finite"):
        Config(recovery_update=bad)


@pytest.mark.parametrize("dt", [0.0, -1.0, float("inf"), float("nan")])
def test_dt_must_be_positive_finite(dt):
    with pytest.raises(ValueError, match=f"`dt` \\(={dt!r}\\) must be a finite number > 0"):
        Config(dt=dt)


def test_negative_resistance():
    with pytest.raises(ValueError, match=r"`resistance` \(=-0\.1\) must be >= 0"):
        Config(resistance=-0.1)


def test_negative_resistance_element():
    with pytest.raises(ValueError, match=r"`resistance` must be >= 0.*\(2,\) has -1\.0"):
        Config(resistance=[0.1, 0.0, -1.0])


def test_zero_resistance_allowed():
    assert Config(resistance=0.0).resistance == 0.0


def test_threshold_not_above_rest():
    with pytest.raises(ValueError, match=r"`threshold` \(=-70\.0\) must be > `potential_rest` \(=-65\.0\)"):
        Config(threshold=-70.0, potential_reset=-80.0)


def test_threshold_equal_rest_rejected():
    with pytest.raises(ValueError, match="`threshold` \\(=-65.0\\) must be > `potential_rest`"):
        Config(threshold=-65.0, potential_reset=-80.0)


def test_threshold_not_above_reset():
    with pytest.raises(ValueError, match=r"`threshold` \(=30\.0\) must be > `potential_reset` \(=40\.0\)"):
        Config(potential_reset=40.0)


def test_threshold_vs_rest_elementwise():
    with pytest.raises(ValueError, match=r"`threshold` must be > `potential_rest` elementwise.*"
                                         r"\(1,\).*threshold=-70\.0.*potential_rest=-65\.0"):
        Config(threshold=[30.0, -70.0], potential_reset=-80.0)


def test_threshold_vs_reset_elementwise_broadcast():
    with pytest.raises(ValueError, match=r"`threshold` must be > `potential_reset`.*\(1, 1\) has threshold=20\.0, potential_reset=25\.0"):
        Config(threshold=[[30.0, 20.0]], potential_reset=[[-60.0], [25.0]])


def test_threshold_and_rest_shapes_must_broadcast():
    with pytest.raises(ValueError, match="`threshold` \\(shape \\(3,\\)\\).*`potential_rest`"):
        Config(threshold=[30.0] * 3, potential_rest=[-65.0] * 2)


def test_unknown_scheme():
    with pytest.raises(ValueError, match=r"`scheme` \(='rk4'\) must be one of \('euler', 'izhikevich2003'\)"):
        Config(scheme="rk4")


def test_unknown_field_constructor():
    with pytest.raises(TypeError, match=r"unknown field\(s\) \['beta'\].*valid fields:.*potential_rest"):
        Config(beta=0.9)


def test_unknown_field_merge():
    with pytest.raises(TypeError, match=r"merge: unknown field\(s\) \['tau'\].*recovery_update"):
        Config().merge(tau=1.0)


def test_unknown_field_from_dict():
    d = {**Config().to_dict(), "v_peak": 30.0}
    with pytest.raises(TypeError, match=r"from_dict: unknown field\(s\) \['v_peak'\].*threshold"):
        Config.from_dict(d)


@pytest.mark.parametrize("bad", ["30", None, True, np.bool_(False), {"a": 1}, 1 + 1j,
                                 ["a", "b"], [True, False], np.array([1j]), object()])
def test_wrong_type_model_field(bad):
    with pytest.raises(TypeError, match=f"`threshold`: expected .*Initializer; got {type(bad).__name__}"):
        Config(threshold=bad)


@pytest.mark.parametrize("name,bad", [("dt", "1.0"), ("dt", True), ("dt", [1.0]),
                                      ("scheme", 1), ("scheme", None),
                                      ("seed", 1.0), ("seed", True), ("seed", "0")])
def test_wrong_type_settings(name, bad):
    with pytest.raises(TypeError, match=f"`{name}`: expected .*got {type(bad).__name__}"):
        Config(**{name: bad})


def test_negative_seed():
    with pytest.raises(ValueError, match=r"`seed` \(=-1\) must be >= 0"):
        Config(seed=-1)


def test_skip_validation_flag_must_be_bool():
    with pytest.raises(TypeError, match="__skip_validation__"):
        Config("yes")


# ---- skip validation -----------------------------------------------------------------

def test_skip_validation_path():
    cfg = Config(__skip_validation__=True, threshold=-100.0)
    assert cfg.threshold == -100.0 and cfg.skip_validation
    with pytest.raises(ValueError, match="`threshold` \\(=-100.0\\) must be > `potential_rest`"):
        cfg.validate()
    out = cfg.materialize((2,))  # no value checks either
    np.testing.assert_array_equal(out["threshold"], [-100.0, -100.0])


def test_skip_validation_positional_like_spark():
    assert Config(True, dt=-1.0).dt == -1.0


def test_skip_validation_still_checks_types_and_names():
    with pytest.raises(TypeError, match="`threshold`"):
        Config(__skip_validation__=True, threshold="high")
    with pytest.raises(TypeError, match="unknown field"):
        Config(__skip_validation__=True, foo=1.0)


def test_merge_of_skipped_config_validates_unless_asked():
    cfg = Config(__skip_validation__=True, threshold=-100.0)
    with pytest.raises(ValueError, match="`threshold`"):
        cfg.merge(seed=1)
    assert cfg.merge(__skip_validation__=True, seed=1).seed == 1
    assert cfg.merge(threshold=0.0).threshold == 0.0


def test_validate_passes_on_valid_config():
    assert Config().validate() is None


# ---- dict / JSON -----------------------------------------------------------------------

def _rich_config():
    return Config(potential_rest=[-65.0, -70.0], threshold=np.full((2, 2), 30.0),
                  recovery_update=Uniform(1.0, 8.0), recovery_timescale=Normal(0.02, 0.001),
                  potential_reset=Constant(-60.0), dt=0.25, scheme="izhikevich2003", seed=9)


def test_to_dict_is_plain_json():
    d = _rich_config().to_dict()
    assert d["potential_rest"] == {"array": [-65.0, -70.0], "shape": [2]}
    assert d["recovery_update"] == {"initializer": "uniform", "low": 1.0, "high": 8.0}
    assert d["dt"] == 0.25 and d["seed"] == 9
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("make", [Config, _rich_config, lambda: Config(threshold=np.array(31.0))])
def test_dict_and_json_round_trip(make):
    cfg = make()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_json(cfg.to_json()) == cfg


def test_from_dict_partial_uses_defaults():
    assert Config.from_dict({"recovery_update": 8.0}) == Config(recovery_update=8.0)


def test_from_dict_validates():
    with pytest.raises(ValueError, match="`dt`"):
        Config.from_dict({"dt": -1.0})


# ---- equality, repr ----------------------------------------------------------------------

def test_equality_and_inequality():
    assert Config() == Config()
    assert Config() != Config(seed=1)
    assert Config(threshold=[30.0, 31.0]) == Config(threshold=np.array([30.0, 31.0]))
    assert Config(threshold=[30.0, 31.0]) != Config(threshold=[30.0, 32.0])
    assert Config(threshold=[30.0]) != Config(threshold=[[30.0]])  # shape matters
    assert Config(threshold=[30.0]) != Config(threshold=30.0)
    assert Config(threshold=Uniform(20.0, 30.0)) == Config(threshold=Uniform(20.0, 30.0))
    assert Config(threshold=Uniform(20.0, 30.0)) != Config(threshold=Uniform(20.0, 31.0))
    assert Config() != "config"


def test_repr_summarizes_arrays():
    text = repr(Config(threshold=np.full((100, 3), 30.0), recovery_update=Uniform(1.0, 2.0)))
    assert text.startswith("IzhikevichSomaConfig(")
    assert "threshold=array(shape=(100, 3))" in text
    assert "recovery_update=Uniform(low=1.0, high=2.0)" in text
    assert len(text) < 400


# ---- materialize ---------------------------------------------------------------------

@pytest.mark.parametrize("units", [(4,), (2, 3), ()])
def test_materialize_shapes(units):
    out = Config().materialize(units)
    assert list(out) == list(MODEL)
    for name, arr in out.items():
        assert arr.shape == units and arr.dtype == np.float64
        np.testing.assert_array_equal(arr, Config.field_info()[name]["default"])


def test_materialize_broadcasts_arrays():
    out = Config(threshold=[30.0, 20.0, 10.0], potential_rest=[[-65.0], [-70.0]]).materialize((2, 3))
    np.testing.assert_array_equal(out["threshold"], [[30.0, 20.0, 10.0]] * 2)
    np.testing.assert_array_equal(out["potential_rest"], [[-65.0] * 3, [-70.0] * 3])
    assert out["threshold"].flags.writeable


def test_materialize_rejects_non_broadcastable():
    with pytest.raises(ValueError, match=r"`threshold` \(shape \(3,\)\) does not broadcast to `units` \(=\(4,\)\)"):
        Config(threshold=[30.0, 20.0, 10.0]).materialize((4,))


def test_materialize_bad_units():
    with pytest.raises(TypeError, match="units"):
        Config().materialize((2.0,))
    with pytest.raises(ValueError, match="units"):
        Config().materialize((-1,))


def test_materialize_int_units():
    assert Config().materialize(5)["threshold"].shape == (5,)


def test_initializers_reproducible_with_same_seed():
    cfg = Config(recovery_update=Uniform(1.0, 8.0), seed=3)
    a, b = cfg.materialize((50,)), Config.from_json(cfg.to_json()).materialize((50,))
    np.testing.assert_array_equal(a["recovery_update"], b["recovery_update"])


def test_initializers_differ_across_seeds():
    draw = lambda s: Config(recovery_update=Uniform(1.0, 8.0), seed=s).materialize((50,))
    assert not np.array_equal(draw(0)["recovery_update"], draw(1)["recovery_update"])


def test_initializers_differ_across_fields():
    init = Uniform(0.0, 1.0)
    out = Config(recovery_timescale=init, recovery_sensitivity=init).materialize((50,))
    assert not np.array_equal(out["recovery_timescale"], out["recovery_sensitivity"])


def test_field_streams_are_independent():
    """Changing one field's initializer does not change another field's draw."""
    a = Config(recovery_update=Uniform(1.0, 8.0)).materialize((20,))
    b = Config(recovery_update=Uniform(1.0, 8.0), recovery_timescale=Normal(0.02, 0.01)).materialize((20,))
    np.testing.assert_array_equal(a["recovery_update"], b["recovery_update"])


def test_materialize_stream_matches_documented_seeding():
    out = Config(recovery_update=Normal(2.0, 1.0), seed=11).materialize((7,))
    expected = np.random.default_rng([11, MODEL.index("recovery_update")]).normal(2.0, 1.0, (7,))
    np.testing.assert_array_equal(out["recovery_update"], expected)


def test_deferred_threshold_check_for_initializer():
    cfg = Config(threshold=Uniform(-80.0, 40.0), seed=0)  # accepted: check is deferred
    with pytest.raises(ValueError, match=r"`threshold` must be > `potential_rest` elementwise; neuron \(\d+,\) has"):
        cfg.materialize((100,))
    ok = Config(threshold=Uniform(0.0, 40.0)).materialize((100,))
    assert (ok["threshold"] >= 0.0).all()


def test_deferred_threshold_vs_initializer_rest():
    cfg = Config(potential_reset=Uniform(-70.0, 35.0))
    with pytest.raises(ValueError, match="`threshold` must be > `potential_reset`"):
        cfg.materialize((200,))


def test_deferred_resistance_check_for_initializer():
    cfg = Config(resistance=Normal(0.0, 1.0))
    with pytest.raises(ValueError, match=r"`resistance` must be >= 0.*neuron \(\d+,\) has -"):
        cfg.materialize((100,))


def test_docstring_examples():
    import doctest

    import spark_torch.config as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_pickle_and_deepcopy():
    import copy
    import pickle

    cfg = Config(threshold=[30.0, 25.0], recovery_update=Uniform(1.0, 2.0), seed=2)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg


def test_json_round_trip_property():
    from hypothesis import given, settings, strategies as st

    finite = st.floats(-1e6, 1e6, allow_nan=False)
    membrane = st.floats(-V_LIMIT, V_LIMIT - 1e3, allow_nan=False)  # valid levels: within ±V_LIMIT mV

    @settings(max_examples=50, deadline=None)
    @given(rest=membrane, gap=st.floats(1e-3, 1e3), r=st.floats(0, 1e3),
           d=st.lists(finite, min_size=1, max_size=4), seed=st.integers(0, 2**63))
    def check(rest, gap, r, d, seed):
        cfg = Config(potential_rest=rest, potential_reset=rest, threshold=rest + gap,
                     resistance=r, recovery_update=d, seed=seed)
        assert Config.from_json(cfg.to_json()) == cfg

    check()
