"""Port a PyTorch ``nn.ConvTranspose3d`` to jax_deconv and check it: outputs and gradients.

PyTorch's transposed convolutions keep their weight as ``(C_in, C_out/groups, kD, kH, kW)``,
Dragon's NCHW layout, so the weight and bias carry over as they are; ``padding=p`` is
``pads=p``, and stride, dilation, groups and output_padding map one to one.

Run: ``python examples/port_pytorch.py`` (needs torch). A few seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jax_deconv import ConvTranspose3d


def port(layer: torch.nn.ConvTranspose3d) -> ConvTranspose3d:
    """The same layer as a jax_deconv pytree layer (float32, NCDHW)."""
    return ConvTranspose3d(
        weight=jnp.asarray(layer.weight.detach().numpy()),
        bias=None if layer.bias is None else jnp.asarray(layer.bias.detach().numpy()),
        kernel_shape=layer.kernel_size, strides=layer.stride, pads=layer.padding,
        dilations=layer.dilation, group=layer.groups, output_padding=layer.output_padding,
    )


def main() -> float:
    torch.manual_seed(0)
    torch_layer = torch.nn.ConvTranspose3d(8, 6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2)
    layer = port(torch_layer)
    print("ported:", layer)

    x = torch.randn(2, 8, 5, 6, 7, requires_grad=True)
    y_torch = torch_layer(x)
    y_torch.square().sum().backward()

    x_jax = jnp.asarray(x.detach().numpy())
    y = layer(x_jax)
    print("output shape:", y.shape, "(PyTorch:", tuple(y_torch.shape), ")")

    def loss(layer: ConvTranspose3d, x: jax.Array) -> jax.Array:
        return jnp.sum(layer(x) ** 2)

    grad_layer, grad_x = jax.grad(loss, argnums=(0, 1))(layer, x_jax)
    worst = 0.0
    for name, ours, theirs in [
        ("y", y, y_torch), ("dx", grad_x, x.grad), ("dw", grad_layer.weight, torch_layer.weight.grad),
        ("db", grad_layer.bias, torch_layer.bias.grad),
    ]:
        theirs = theirs.detach().numpy()
        error = float(np.abs(np.asarray(ours) - theirs).max() / (1 + np.abs(theirs).max()))
        worst = max(worst, error)
        print(f"{name:3s} largest difference / (1 + largest value): {error:.1e}")
    assert worst < 1e-5, worst
    print("the ported layer matches PyTorch within float32 rounding")
    return worst


if __name__ == "__main__":
    main()
