"""Tests for spark_torch.presets: the paper's Fig. 2 classes."""

import numpy as np
import pytest

from spark_torch.config import IzhikevichSomaConfig as Config
from spark_torch.presets import CITATION, PRESETS, PresetInfo, heterogeneous_preset, preset

from reference_numpy import FIG2_CLASSES as PAPER  # Izhikevich (2003), Fig. 2: (a, b, c, d)

LONG = {"RS": "regular spiking", "IB": "intrinsically bursting", "CH": "chattering",
        "FS": "fast spiking", "TC": "thalamo-cortical", "RZ": "resonator",
        "LTS": "low-threshold spiking"}


def test_preset_table_matches_paper():
    assert list(PRESETS) == list(PAPER)
    for name, (a, b, c, d) in PAPER.items():
        info = PRESETS[name]
        assert isinstance(info, PresetInfo)
        assert (info.name, info.long_name) == (name, LONG[name])
        assert (info.a, info.b, info.c, info.d) == (a, b, c, d)


@pytest.mark.parametrize("name", list(PAPER))
def test_preset_config_values(name):
    a, b, c, d = PAPER[name]
    cfg = preset(name)
    assert isinstance(cfg, Config)
    assert (cfg.recovery_timescale, cfg.recovery_sensitivity, cfg.potential_reset,
            cfg.recovery_update) == (a, b, c, d)
    assert (cfg.potential_rest, cfg.threshold) == (-65.0, 30.0)
    defaults = Config()
    assert (cfg.resistance, cfg.dt, cfg.scheme, cfg.seed) == (
        defaults.resistance, defaults.dt, defaults.scheme, defaults.seed)


def test_citation():
    assert CITATION == ("Izhikevich, E. M. (2003). Simple model of spiking neurons. IEEE Trans. "
                        "Neural Netw. 14(6):1569-1572, Fig. 2. doi:10.1109/TNN.2003.820440")
    assert all(info.citation == CITATION for info in PRESETS.values())


@pytest.mark.parametrize("name", ["rs", "Rs", "lts", "Lts"])
def test_preset_case_insensitive(name):
    assert preset(name) == preset(name.upper())


def test_preset_overrides():
    cfg = preset("FS", dt=0.5, resistance=10.0, recovery_update=3.0)
    assert (cfg.dt, cfg.resistance, cfg.recovery_update, cfg.recovery_timescale) == (
        0.5, 10.0, 3.0, 0.1)


def test_preset_overrides_are_validated():
    with pytest.raises(ValueError, match="`dt` \\(=-1.0\\)"):
        preset("RS", dt=-1.0)
    with pytest.raises(TypeError, match="unknown field.*'beta'"):
        preset("RS", beta=0.5)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown preset 'XX'.*\['RS', 'IB', 'CH', 'FS', 'TC', 'RZ', 'LTS'\]"):
        preset("XX")
    with pytest.raises(TypeError, match="preset name must be a str"):
        preset(3)


def test_heterogeneous_preset_shapes_and_values():
    names = ["RS", "ib", "FS", "TC", "RS"]
    cfg = heterogeneous_preset(names)
    for field, col in [("recovery_timescale", 0), ("recovery_sensitivity", 1),
                       ("potential_reset", 2), ("recovery_update", 3)]:
        arr = getattr(cfg, field)
        assert isinstance(arr, np.ndarray) and arr.shape == (5,) and arr.dtype == np.float64
        np.testing.assert_array_equal(arr, [PAPER[n.upper()][col] for n in names])
    assert (cfg.potential_rest, cfg.threshold) == (-65.0, 30.0)
    out = cfg.materialize((5,))
    assert all(v.shape == (5,) for v in out.values())


def test_heterogeneous_preset_overrides_and_round_trip():
    cfg = heterogeneous_preset(["CH", "LTS"], resistance=[1.0, 2.0], seed=4)
    np.testing.assert_array_equal(cfg.resistance, [1.0, 2.0])
    assert cfg.seed == 4
    assert Config.from_json(cfg.to_json()) == cfg


def test_heterogeneous_preset_errors():
    with pytest.raises(ValueError, match="unknown preset 'XY'"):
        heterogeneous_preset(["RS", "XY"])
    with pytest.raises(ValueError, match="at least one"):
        heterogeneous_preset([])
    with pytest.raises(TypeError, match="sequence of preset names"):
        heterogeneous_preset("RS")


def test_docstring_examples():
    import doctest

    import spark_torch.presets as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
