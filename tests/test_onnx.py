"""ONNX ``ConvTranspose`` through :func:`jax_deconv.onnx_conv_transpose`, against real ONNX data.

* the 11 backend node cases, built in memory by ``onnx.backend.test.case.node.collect_testcases``;
* the three PyTorch-exported ConvTranspose models still shipped on disk with ``onnx``;
* random configurations against onnxruntime, a live oracle (it agrees with PyTorch on groups).

Skipped when ``onnx`` (or, for the last part, ``onnxruntime``) is absent.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from support import ALGORITHMS, assert_close

from jax_deconv import onnx_conv_transpose, onnx_to_dragon

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

NODE_CASES = (
    "test_convtranspose", "test_convtranspose_1d", "test_convtranspose_3d", "test_convtranspose_autopad_same",
    "test_convtranspose_dilations", "test_convtranspose_group_2", "test_convtranspose_group_2_image_3",
    "test_convtranspose_kernel_shape", "test_convtranspose_output_shape", "test_convtranspose_pad",
    "test_convtranspose_pads",
)
DISK_CASES = (
    "pytorch-converted/test_ConvTranspose2d",
    "pytorch-converted/test_ConvTranspose2d_no_bias",
    "pytorch-operator/test_operator_convtranspose",
)


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture(scope="module")
def node_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # building every operator's cases warns about overflowing casts
        warnings.simplefilter("ignore")
        return {case.name: case for case in collect_testcases("ConvTranspose")}


def test_every_node_case_is_covered(node_cases):
    assert sorted(node_cases) == sorted(NODE_CASES)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", NODE_CASES)
def test_node_case(node_cases, name, algorithm):
    case = node_cases[name]
    (node,) = case.model.graph.node
    assert node.op_type == "ConvTranspose"
    assert case.data_sets, name
    for inputs, (want,) in case.data_sets:
        got = onnx_conv_transpose(list(inputs), **attributes(node), algorithm=algorithm)
        assert_close(got, want)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", DISK_CASES)
def test_pytorch_exported_model(name, algorithm):
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", name)
    model = onnx.load(os.path.join(folder, "model.onnx"))
    (node,) = model.graph.node
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for index, graph_input in enumerate(i for i in model.graph.input if i.name not in values):
        tensor = onnx.load_tensor(os.path.join(folder, "test_data_set_0", f"input_{index}.pb"))
        values[graph_input.name] = numpy_helper.to_array(tensor)
    want = numpy_helper.to_array(onnx.load_tensor(os.path.join(folder, "test_data_set_0", "output_0.pb")))
    got = onnx_conv_transpose([values[i] for i in node.input], **attributes(node), algorithm=algorithm)
    assert_close(got, want)


# --------------------------------------------------------------------------- onnxruntime


def ort_conv_transpose(x, w, b, attrs):
    ort = pytest.importorskip("onnxruntime")
    f32 = onnx.TensorProto.FLOAT
    names = ["x", "w"] + ([] if b is None else ["b"])
    feeds = dict(zip(names, (x, w, b)))
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", names, ["y"], **attrs)], "g",
        [helper.make_tensor_value_info(k, f32, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", f32, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def random_onnx_case(seed: int):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    group = int(rng.choice([1, 2]))
    kernel = [int(v) for v in rng.integers(1, 5, n)]
    strides = [int(v) for v in rng.integers(1, 4, n)]
    dilations = [int(v) for v in rng.choice([1, 2], n)]
    size = [int(v) for v in rng.integers(1, 5, n)]
    adjust = [int(rng.integers(0, s)) for s in strides]  # onnxruntime: < stride (the spec: < max(s, d))
    full = [s * (i - 1) + d * (k - 1) + 1 + a for s, i, d, k, a in zip(strides, size, dilations, kernel, adjust)]
    attrs = dict(strides=strides, dilations=dilations, group=group, output_padding=adjust, kernel_shape=kernel)
    mode = ("pads", "output_shape", "SAME_UPPER", "SAME_LOWER", "VALID")[seed % 5]
    if mode == "pads":
        attrs["pads"] = [int(rng.integers(0, (f - 1) // 2 + 1)) for f in full * 2]
    elif mode == "output_shape":
        attrs["output_shape"] = [int(rng.integers(1, f + 1)) for f in full]
        attrs["auto_pad"] = str(rng.choice(["NOTSET", "SAME_UPPER", "SAME_LOWER"]))
    else:
        attrs["auto_pad"] = mode
    x = rng.standard_normal((2, 2 * group, *size)).astype(np.float32)
    w = rng.standard_normal((2 * group, int(rng.integers(1, 3)), *kernel)).astype(np.float32)
    b = rng.standard_normal(w.shape[1] * group).astype(np.float32) if seed % 2 else None
    return attrs, x, w, b


@pytest.mark.parametrize("seed", range(20))
def test_matches_onnxruntime(seed):
    attrs, x, w, b = random_onnx_case(seed)
    want = ort_conv_transpose(x, w, b, attrs)
    got = onnx_conv_transpose([x, w] if b is None else [x, w, b], **attrs, algorithm=ALGORITHMS[seed % 2])
    assert_close(got, want)


def test_same_with_short_result_follows_onnxruntime():
    # k=1, s=2: L = 5 < S*s = 6. The spec asks for 6 outputs; onnxruntime clamps the total
    # padding at 0 and returns the 5 computed ones. We follow onnxruntime.
    x = np.arange(1.0, 4.0, dtype=np.float32).reshape(1, 1, 3)
    w = np.ones((1, 1, 1), np.float32)
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        want = ort_conv_transpose(x, w, None, dict(auto_pad=auto_pad, strides=[2]))
        got = onnx_conv_transpose([x, w], auto_pad=auto_pad, strides=[2])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, [[[1, 0, 2, 0, 3]]])


# --------------------------------------------------------------------------- the mapping itself


def test_mapping_differs_from_dragon_exactly_by_output_padding():
    # ONNX's total padding counts output_padding; SAME_UPPER puts the odd element at the end.
    kw = onnx_to_dragon((1, 1, 3), (1, 1, 3), strides=[2], output_shape=[6], output_padding=[1])
    assert kw["pads"] == (1, 0) and kw["output_padding"] == (0,)  # total 2: crop 1 in front
    kw = onnx_to_dragon((1, 1, 3), (1, 1, 3), strides=[2], output_shape=[6], auto_pad=b"SAME_UPPER")
    assert kw["pads"] == (0, 1) and kw["output_padding"] == (0,)  # total 1: crop it at the end


@pytest.mark.parametrize(
    "attrs, exc, match",
    [
        (dict(auto_pad="SAME"), ValueError, r"`auto_pad` must be one of 'NOTSET', 'SAME_UPPER'.*got 'SAME'"),
        (dict(auto_pad=1), TypeError, r"`auto_pad` must be one of .*got 1"),
        (dict(pads=[1, 1]), ValueError, r"`pads` must be None or a sequence of 4 .*got \[1, 1\] \(2 values\)"),
        (dict(pads=[0, -1, 0, 0]), ValueError, r"`pads` must be .*non-negative.*got \[0, -1, 0, 0\]"),
        (dict(strides=[2, 2], output_padding=[2, 0]), ValueError,
         r"`output_padding` must be below max\(stride, dilation\).*got \(2, 0\).*axis 0"),
        (dict(output_shape=[7, 5]), ValueError, r"`output_shape` \(7, 5\) gives a negative total padding \(-2, 0\)"),
        (dict(output_shape=[6, 5], auto_pad="SAME_UPPER"), ValueError, r"`output_shape` \(6, 5\) gives a negative"),
        (dict(pads=[0, 0, 0, 0], auto_pad="VALID"), ValueError, r"`pads` cannot be used together with auto_pad="),
        (dict(output_shape=[1, 1, 5, 5]), ValueError, r"`output_shape` must be None, an int or a sequence of 2 ints"),
        (dict(kernel_shape=[3, 3, 3]), ValueError, r"`kernel_shape` must be an int or a sequence of 1 or 2"),
    ],
)
def test_mapping_errors(attrs, exc, match):
    with pytest.raises(exc, match=match):
        onnx_to_dragon((1, 2, 3, 3), (2, 1, 3, 3), **attrs)
