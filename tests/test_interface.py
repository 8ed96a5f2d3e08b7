"""The native kernel's binary interface: the Python tables (spark_torch.kernel.native.interface) and the
C++ library agree, and both ways into the library reject unknown codes and wrong operand counts."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_torch.kernel import model
from spark_torch.kernel.native import interface


@pytest.fixture(scope="module")
def library():
    from spark_torch.kernel import native

    try:
        return native.load()
    except native.Unavailable as error:
        pytest.skip(f"no native kernel here: {error}")


def test_library_describes_exactly_the_python_tables(library):
    describe = getattr(library.handle, interface.SYMBOLS["interface"])
    describe.restype = ctypes.c_char_p
    assert describe().decode() == interface.description()


def test_tables_name_the_model_and_the_ctypes_struct_follows_them():
    assert interface.FORWARD_OPERANDS[3:10] == model.IzhikevichParams._fields
    assert f"schemes:{','.join(model.SCHEMES)};" in interface.description()
    assert [name for name, _ in interface.Attributes._fields_] == [name for name, _ in interface.ATTRIBUTES]
    description = interface.description()
    assert "forward_operands:current,v0,u0,potential_rest," in description
    assert f"parallel_work:{1 << 18}" in description


def test_a_library_with_another_interface_is_refused():
    class Other:
        def __init__(self, text):
            self.SparkTorchIzhikevichInterface = lambda: text

    mismatch = interface.description().replace("v0,u0", "u0,v0").encode()
    with pytest.raises(interface.InterfaceMismatch, match="differs"):
        interface.check_library(Other(mismatch))
    interface.check_library(Other(interface.description().encode()))


def _direct_forward(entry_points, scheme_code=0, dtype_code=0, period=3, n_operands=None, residuals=1):
    m = 6
    current = np.ones(m, np.float32)
    v0, u0 = np.full(m, -65.0, np.float32), np.full(m, -13.0, np.float32)
    params = [np.full(period, value, np.float32) for value in (-65.0, -65.0, 1.0, 30.0, 0.02, 0.2, 8.0)]
    steps = np.array([1], np.int32)
    outputs = [np.full(m, 7.0, np.float32) for _ in range(4)]
    operands = [current, v0, u0, *params, steps]
    results = [outputs[0], None, outputs[1], outputs[2], outputs[3], None, None, None, None, None]
    view = lambda a: interface.View(None, 0) if a is None else interface.View(a.ctypes.data, a.size)
    in_views = (interface.View * len(operands))(*map(view, operands))
    out_views = (interface.View * len(results))(*map(view, results))
    attributes = interface.Attributes(dtype=dtype_code, t_buf=1, m=m, dt=1.0, scheme=scheme_code,
                                      residuals=residuals)
    error = ctypes.create_string_buffer(256)
    status = entry_points.forward(ctypes.byref(attributes), in_views, n_operands or len(operands), out_views,
                                  len(results), error, 256)
    return status, error.value.decode(), outputs


@pytest.mark.parametrize("case,kwargs,message", [
    ("unknown scheme", dict(scheme_code=2), "scheme"),
    ("unknown dtype", dict(dtype_code=2), "dtype"),
    ("period not dividing the neurons", dict(period=4), "divide"),
    ("wrong operand count", dict(n_operands=10), "operands"),
    ("unknown residuals mode", dict(residuals=4), "residuals"),
    ("raw trace without checkpoints", dict(residuals=2), "every"),
])
def test_direct_entry_points_reject_bad_calls_and_write_nothing(library, case, kwargs, message):
    from spark_torch.kernel import native

    status, error, outputs = _direct_forward(native.entry_points(), **kwargs)
    assert status == 1 and message in error
    assert all((out == 7.0).all() for out in outputs)


def test_direct_entry_points_run_a_valid_call(library):
    from spark_torch.kernel import native

    status, error, outputs = _direct_forward(native.entry_points())
    assert status == 0, error
    np.testing.assert_allclose(outputs[1], -65.0 + (0.04 * 65 * 65 - 5 * 65 + 140 + 13 + 1), rtol=1e-6)


def test_ffi_handler_rejects_an_unknown_scheme_code(library):
    """The FFI handler checks the codes too: an unknown scheme is an error, not the other scheme's loop."""
    current = jnp.ones((2, 3), jnp.float32)
    periodic = [jnp.full((3,), v, jnp.float32) for v in (-65.0, -13.0, -65.0, -65.0, 1.0, 30.0, 0.02, 0.2, 8.0)]
    results = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in ((2, 3), (0,), (2, 3), (2, 3), (0,), (0,), (0,), (0,),
                                                                   (0,), (0,)))
    call = jax.ffi.ffi_call(interface.FORWARD_TARGET, results)
    with pytest.raises(Exception, match="scheme"):
        jax.block_until_ready(call(current, *periodic, jnp.int32(2), dt=np.float64(1.0), scheme=np.int64(7),
                                   residuals=np.int64(1), every=np.int64(0)))
    good = call(current, *periodic, jnp.int32(2), dt=np.float64(1.0), scheme=np.int64(0), residuals=np.int64(1),
                every=np.int64(0))
    assert np.isfinite(np.asarray(good[2])).all()
