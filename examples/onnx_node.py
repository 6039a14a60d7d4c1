"""Run an ONNX graph's ``ConvTranspose`` node through jax_deconv, beside onnxruntime.

``onnx_conv_transpose`` takes the node's attributes as they are and follows ONNX's rules
(automatic padding with ``output_padding`` in its total, ``SAME_UPPER``/``SAME_LOWER``), not
Dragon's; ``onnx_to_dragon`` shows the Dragon arguments it runs.

Run: ``python examples/onnx_node.py`` (needs onnx and onnxruntime). A few seconds.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper

from jax_deconv import onnx_conv_transpose, onnx_to_dragon

CASES = [  # the attributes of a ConvTranspose node, as ONNX spells them
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(kernel_shape=[3, 3], strides=[3, 2], output_shape=[10, 8], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 3], strides=[2, 2], dilations=[2, 1], group=2, auto_pad="SAME_LOWER"),
]


def graph(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attributes: dict) -> onnx.ModelProto:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attributes)
    model = helper.make_model(
        helper.make_graph(
            [node], "deconv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
             helper.make_tensor_value_info("w", TensorProto.FLOAT, w_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    return model


def main() -> float:
    rng = np.random.default_rng(0)
    worst = 0.0
    for attributes in CASES:
        x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
        w = rng.standard_normal((4, 3, *attributes["kernel_shape"])).astype(np.float32)  # (C_in, C_out/group, K..)
        session = onnxruntime.InferenceSession(graph(x.shape, w.shape, attributes).SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        (want,) = session.run(None, {"x": x, "w": w})
        got = np.asarray(onnx_conv_transpose([x, w], **attributes))
        error = float(np.abs(got - want).max() / (1 + np.abs(want).max())) if got.shape == want.shape else np.inf
        worst = max(worst, error)
        print(f"{attributes}\n  onnxruntime {want.shape}, ours {got.shape}, difference {error:.1e}")
        print(f"  as Dragon arguments: {onnx_to_dragon(x.shape, w.shape, **attributes)}")
    assert worst < 1e-5, worst
    print("every node matches onnxruntime within float32 rounding")
    return worst


if __name__ == "__main__":
    main()
