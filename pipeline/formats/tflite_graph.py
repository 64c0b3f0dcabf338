"""``model.onnx`` translated to a LiteRT (TFLite) flatbuffer, op by op, without TensorFlow or litert-torch.

The converters that would do this (litert-torch, its nightly, onnx2tf) cannot be installed beside
the project's torch (README, "Export formats"), so this module writes the flatbuffer itself (``tflite_builder``) with
the schema bindings that the LiteRT runtime ships (``ai_edge_litert.schema_py_generated``). It
covers the operators of CNN classifiers (convolution, depthwise convolution, pooling, the usual
activations, elementwise arithmetic, reductions, concatenation, the flattening reshape, the dense
head); any other operator is refused by name, so nothing is written. The file takes the same NCHW
input as ``model.onnx`` (a leading transpose makes it NHWC, as TFLite's kernels are), keeps the
dynamic batch axis (``shape_signature`` -1), embeds cnnpipe's metadata as a ``cnnpipe_meta``
metadata buffer and has a ``serving_default`` signature (``input`` → ``logits``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ExportFailed
from .tflite_builder import TFLiteGraph

NCHW_TO_NHWC, NHWC_TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
AXIS_IN_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}  # an NCHW axis's place in NHWC


class Translation:
    """One ONNX graph's values as TFLite tensors: each activation's index, static shape (batch 1) and
    whether it is held NHWC (every 4-D activation is)."""

    def __init__(self, model: Any, schema: Any) -> None:
        from onnx import numpy_helper, shape_inference

        self.g = TFLiteGraph(schema)
        self.s = schema
        inferred = shape_inference.infer_shapes(model)
        self.onnx_shapes = {v.name: tuple(d.dim_value or 1 for d in v.type.tensor_type.shape.dim)
                            for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.index: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...]] = {}  # TFLite's shape (NHWC for 4-D), batch 1

    def activation(self, onnx_name: str, shape: tuple[int, ...]) -> int:
        """A new activation tensor for an ONNX value (``shape`` as TFLite holds it)."""
        self.index[onnx_name], self.shape[onnx_name] = self.g.tensor(onnx_name, shape, True), shape
        return self.index[onnx_name]

    def out(self, node: Any, i: int = 0) -> int:
        """The TFLite tensor of a node's output, shaped from ONNX's shape inference (4-D: NHWC)."""
        shape = self.onnx_shapes.get(node.output[i])
        if shape is None:
            raise ExportFailed(f"litert export failed: no shape is known for {node.output[i]!r} ({node.op_type})")
        return self.activation(node.output[i], nhwc(shape) if len(shape) == 4 else shape)

    def value(self, name: str, rank: int = 0) -> int:
        """The tensor of an ONNX input: an activation, or a constant laid out to broadcast against a
        ``rank``-D activation (4: padded to 4-D and made NHWC)."""
        if name in self.index:
            return self.index[name]
        if name not in self.consts:
            raise ExportFailed(f"litert export failed: {name!r} is neither a constant nor computed before it is used")
        data = self.consts[name]
        if rank == 4 and data.ndim:
            data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(NCHW_TO_NHWC)
        return self.g.const(name, data)

    def transposed(self, name: str, perm: tuple[int, ...], shape: tuple[int, ...]) -> int:
        """A transpose of activation ``name`` to ``shape``."""
        tensor = self.g.tensor(name + "/transposed", shape, True)
        self.g.op("TRANSPOSE", [self.index[name], self.g.const(name + "/perm", np.array(perm))], [tensor],
                  self.g.options("TransposeOptions"), "TransposeOptions")
        return tensor


def nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """An NCHW shape in NHWC order."""
    return tuple(shape[i] for i in NCHW_TO_NHWC)


def attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def translate(model: Any, meta: bytes) -> bytes:
    """The ONNX model (one input ``input``, NCHW; one output ``logits``) as TFLite flatbuffer bytes."""
    from ai_edge_litert import schema_py_generated as schema

    t = Translation(model, schema)
    (inp,) = [i for i in model.graph.input if i.name not in t.consts]
    in_shape = t.onnx_shapes[inp.name]
    entry = t.g.tensor(inp.name, in_shape, True)
    t.index[inp.name], t.shape[inp.name] = entry, in_shape
    if len(in_shape) == 4:
        t.index[inp.name] = t.transposed(inp.name, NCHW_TO_NHWC, nhwc(in_shape))
        t.shape[inp.name] = nhwc(in_shape)
    for node in model.graph.node:
        rule = RULES.get(node.op_type)
        if rule is None:
            raise ExportFailed(f"litert export failed: the ONNX operator {node.op_type} ({node.name}) is not in cnnpipe's "
                               f"ONNX-to-LiteRT translation (it covers {', '.join(sorted(RULES))}); export without litert")
        rule(t, node, attrs(node))
    (output,) = model.graph.output
    if len(t.shape[output.name]) != 2:
        raise ExportFailed(f"litert export failed: the output {output.name!r} is not a batch of logits (rank 2)")
    return t.g.serialize([entry], [t.index[output.name]], meta)


# ---- one rule per ONNX operator ------------------------------------------------------------------


def _padded(t: Translation, node: Any, pads: list[int], fill: float) -> int:
    """The node's first input padded spatially by ONNX ``pads`` (top, left, bottom, right) with ``fill``."""
    name = node.input[0]
    if not any(pads):
        return t.index[name]
    top, left, bottom, right = pads
    n, h, w, c = t.shape[name]
    padded = t.g.tensor(name + "/padded", (n, h + top + bottom, w + left + right, c), True)
    widths = t.g.const(name + "/pads", np.array([[0, 0], [top, bottom], [left, right], [0, 0]]))
    value = t.g.const(name + "/fill", np.array([fill], dtype=np.float32))
    t.g.op("PADV2", [t.index[name], widths, value], [padded], t.g.options("PadV2Options"), "PadV2Options")
    return padded


def _window(t: Translation, node: Any, a: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """A convolution's or pool's kernel, strides and pads (top, left, bottom, right), refusing what TFLite lacks
    (``ceil_mode`` is taken where rounding up gives the same output size, as for 2x2 pools on even sides)."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportFailed(f"litert export failed: {node.op_type} {node.name} uses auto_pad, which the translation does not take")
    kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    pads = [pads[0], pads[1], pads[2], pads[3]]
    if a.get("ceil_mode", 0):
        _, h, w, _ = t.shape[node.input[0]]
        spans = [(h + pads[0] + pads[2] - kernel[0], strides[0]), (w + pads[1] + pads[3] - kernel[1], strides[1])]
        if any(span % stride for span, stride in spans):
            raise ExportFailed(f"litert export failed: {node.op_type} {node.name} rounds its output size up (ceil_mode), "
                               "which TFLite's pools cannot")
    return kernel, strides, pads


def conv(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Conv: CONV_2D (filters OHWI) or, with one group per input channel, DEPTHWISE_CONV_2D."""
    weight = t.consts.get(node.input[1])
    if weight is None or weight.ndim != 4:
        raise ExportFailed(f"litert export failed: Conv {node.name} is not a 2-D convolution with constant weights")
    _, strides, pads = _window(t, node, a)
    dilation = list(a.get("dilations", [1, 1]))
    groups, channels = int(a.get("group", 1)), t.shape[node.input[0]][3]
    bias = t.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0], np.float32)
    source = _padded(t, node, pads, 0.0)
    common = dict(padding=t.s.Padding.VALID, strideH=strides[0], strideW=strides[1],
                  dilationHFactor=dilation[0], dilationWFactor=dilation[1])
    if groups == 1:
        filters = t.g.const(node.input[1], weight.transpose(0, 2, 3, 1))
        t.g.op("CONV_2D", [source, filters, t.g.const(node.name + "/bias", bias)], [t.out(node)],
               t.g.options("Conv2DOptions", **common), "Conv2DOptions")
    elif groups == channels and weight.shape[1] == 1:
        out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        filters = t.g.const(node.input[1], weight.reshape(out_channels, kh, kw).transpose(1, 2, 0)[None])
        t.g.op("DEPTHWISE_CONV_2D", [source, filters, t.g.const(node.name + "/bias", bias)], [t.out(node)],
               t.g.options("DepthwiseConv2DOptions", depthMultiplier=out_channels // channels, **common),
               "DepthwiseConv2DOptions")
    else:
        raise ExportFailed(f"litert export failed: Conv {node.name} has {groups} groups of several channels, "
                           "which TFLite has no operator for")


def pool(code: str, fill: float) -> Callable[[Translation, Any, dict[str, Any]], None]:
    """MaxPool / AveragePool: explicit padding (max: -inf; average: zeros, only when the padding is counted)."""

    def rule(t: Translation, node: Any, a: dict[str, Any]) -> None:
        kernel, strides, pads = _window(t, node, a)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ExportFailed(f"litert export failed: {node.op_type} {node.name} is dilated, which TFLite's pools lack")
        if code == "AVERAGE_POOL_2D" and any(pads) and not a.get("count_include_pad", 0):
            raise ExportFailed(f"litert export failed: AveragePool {node.name} pads without counting the padding, "
                               "which TFLite's pool cannot express")
        options = t.g.options("Pool2DOptions", padding=t.s.Padding.VALID, strideH=strides[0], strideW=strides[1],
                              filterHeight=kernel[0], filterWidth=kernel[1])
        t.g.op(code, [_padded(t, node, pads, fill)], [t.out(node)], options, "Pool2DOptions")

    return rule


def global_average(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """GlobalAveragePool: MEAN over H and W, dimensions kept."""
    axes = t.g.const(node.name + "/axes", np.array([1, 2]))
    t.g.op("MEAN", [t.index[node.input[0]], axes], [t.out(node)], t.g.options("ReducerOptions", keepDims=True),
           "ReducerOptions")


def reduce_mean(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """ReduceMean over constant axes (an input from opset 18, an attribute before)."""
    rank = len(t.shape[node.input[0]])
    axes = t.consts[node.input[1]].tolist() if len(node.input) > 1 else list(a["axes"])
    axes = [axis % rank for axis in axes]
    if rank == 4:
        axes = [AXIS_IN_NHWC[axis] for axis in axes]
    keep = bool(a.get("keepdims", 1))
    if rank == 4 and not keep and sorted(axes) != [1, 2]:
        raise ExportFailed(f"litert export failed: ReduceMean {node.name} drops an axis other than H and W")
    t.g.op("MEAN", [t.index[node.input[0]], t.g.const(node.name + "/axes", np.array(sorted(axes)))], [t.out(node)],
           t.g.options("ReducerOptions", keepDims=keep), "ReducerOptions")


def unary(code: str) -> Callable[[Translation, Any, dict[str, Any]], None]:
    """An activation with a TFLite operator of its own."""

    def rule(t: Translation, node: Any, a: dict[str, Any]) -> None:
        options = t.g.options("HardSwishOptions") if code == "HARD_SWISH" else None
        t.g.op(code, [t.index[node.input[0]]], [t.out(node)], options, "HardSwishOptions" if options else "")

    return rule


def binary(code: str) -> Callable[[Translation, Any, dict[str, Any]], None]:
    """Add, Sub, Mul, Div, Max, Min: constants laid out to broadcast as ONNX does."""
    kinds = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}

    def rule(t: Translation, node: Any, a: dict[str, Any]) -> None:
        ranks = [len(t.shape[name]) for name in node.input if name in t.shape]
        if len(set(ranks)) > 1:
            raise ExportFailed(f"litert export failed: {node.op_type} {node.name} broadcasts activations of different ranks")
        inputs = [t.value(name, ranks[0]) for name in node.input]
        kind = kinds.get(code, "MaximumMinimumOptions")
        t.g.op(code, inputs, [t.out(node)], t.g.options(kind), kind)

    return rule


def _scalar(t: Translation, name: str, value: float) -> int:
    return t.g.const(name, np.array([value], dtype=np.float32))


def hard_sigmoid(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """HardSigmoid: min(max(alpha·x + beta, 0), 1)."""
    source, shape = t.index[node.input[0]], t.shape[node.input[0]]
    steps = [("MUL", "MulOptions", a.get("alpha", 0.2)), ("ADD", "AddOptions", a.get("beta", 0.5)),
             ("MAXIMUM", "MaximumMinimumOptions", 0.0)]
    for i, (code, kind, value) in enumerate(steps):
        nxt = t.g.tensor(f"{node.output[0]}/{i}", shape, True)
        t.g.op(code, [source, _scalar(t, f"{node.name}/{i}", value)], [nxt], t.g.options(kind), kind)
        source = nxt
    t.g.op("MINIMUM", [source, _scalar(t, node.name + "/one", 1.0)], [t.out(node)],
           t.g.options("MaximumMinimumOptions"), "MaximumMinimumOptions")


def clip(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Clip: RELU6 for [0, 6], RELU for [0, ∞), else MAXIMUM and MINIMUM with its bounds."""
    bounds = [t.consts[name].item() if name else None for name in list(node.input[1:3]) + [""] * (3 - len(node.input))]
    low, high = (a.get("min"), a.get("max")) if len(node.input) == 1 else bounds
    if low == 0.0 and high in (6.0, None):
        return unary("RELU6" if high == 6.0 else "RELU")(t, node, a)
    source, shape = t.index[node.input[0]], t.shape[node.input[0]]
    for i, (code, value) in enumerate((("MAXIMUM", low), ("MINIMUM", high))):
        if value is None:
            continue
        nxt = t.out(node) if code == "MINIMUM" or high is None else t.g.tensor(f"{node.output[0]}/{i}", shape, True)
        t.g.op(code, [source, _scalar(t, f"{node.name}/{i}", value)], [nxt], t.g.options("MaximumMinimumOptions"),
               "MaximumMinimumOptions")
        source = nxt


def flatten(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Reshape to a batch of vectors (or Flatten at axis 1): an NHWC activation goes back to NCHW first,
    so the vector's order is PyTorch's."""
    name = node.input[0]
    target = t.onnx_shapes.get(node.output[0], ())
    if len(target) != 2 or (node.op_type == "Flatten" and a.get("axis", 1) != 1):
        raise ExportFailed(f"litert export failed: {node.op_type} {node.name} does not flatten to a batch of vectors")
    source = t.index[name]
    if len(t.shape[name]) == 4:
        source = t.transposed(name, NHWC_TO_NCHW, tuple(t.shape[name][i] for i in NHWC_TO_NCHW))
    new_shape = np.array([-1, target[1]])
    t.g.op("RESHAPE", [source, t.g.const(node.name + "/shape", new_shape)], [t.out(node)],
           t.g.options("ReshapeOptions", newShape=new_shape.tolist()), "ReshapeOptions")


def gemm(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Gemm (or MatMul) of a batch of vectors by constant weights: FULLY_CONNECTED."""
    weight = t.consts.get(node.input[1])
    if weight is None or a.get("transA", 0) or len(t.shape[node.input[0]]) != 2:
        raise ExportFailed(f"litert export failed: {node.op_type} {node.name} is not a dense layer with constant weights")
    weight = weight if a.get("transB", 0) else weight.T
    weight = weight * a.get("alpha", 1.0)
    bias = t.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0], np.float32)
    if bias is None:
        raise ExportFailed(f"litert export failed: {node.op_type} {node.name} has a bias that is not a constant")
    bias = np.broadcast_to(bias * a.get("beta", 1.0), (weight.shape[0],))
    t.g.op("FULLY_CONNECTED", [t.index[node.input[0]], t.g.const(node.input[1], weight), t.g.const(node.name + "/bias", bias)],
           [t.out(node)], t.g.options("FullyConnectedOptions"), "FullyConnectedOptions")


def concat(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Concat along an axis (4-D: its NHWC place)."""
    rank = len(t.shape[node.input[0]])
    axis = a["axis"] % rank
    axis = AXIS_IN_NHWC[axis] if rank == 4 else axis
    t.g.op("CONCATENATION", [t.value(name, rank) for name in node.input], [t.out(node)],
           t.g.options("ConcatenationOptions", axis=axis), "ConcatenationOptions")


def softmax(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Softmax over the classes of a batch of vectors."""
    if len(t.shape[node.input[0]]) != 2 or a.get("axis", -1) not in (-1, 1):
        raise ExportFailed(f"litert export failed: Softmax {node.name} is not over the last axis of a batch of vectors")
    t.g.op("SOFTMAX", [t.index[node.input[0]]], [t.out(node)], t.g.options("SoftmaxOptions", beta=1.0), "SoftmaxOptions")


def identity(t: Translation, node: Any, a: dict[str, Any]) -> None:
    """Identity (and Dropout in inference): the same tensor."""
    t.index[node.output[0]], t.shape[node.output[0]] = t.index[node.input[0]], t.shape[node.input[0]]


RULES: dict[str, Callable[[Translation, Any, dict[str, Any]], None]] = {
    "Conv": conv, "MaxPool": pool("MAX_POOL_2D", float(np.finfo(np.float32).min)),
    "AveragePool": pool("AVERAGE_POOL_2D", 0.0), "GlobalAveragePool": global_average, "ReduceMean": reduce_mean,
    "Relu": unary("RELU"), "Sigmoid": unary("LOGISTIC"), "HardSwish": unary("HARD_SWISH"), "HardSigmoid": hard_sigmoid,
    "Clip": clip, "Add": binary("ADD"), "Sub": binary("SUB"), "Mul": binary("MUL"), "Div": binary("DIV"),
    "Max": binary("MAXIMUM"), "Min": binary("MINIMUM"), "Reshape": flatten, "Flatten": flatten, "Gemm": gemm,
    "MatMul": gemm, "Concat": concat, "Softmax": softmax, "Identity": identity, "Dropout": identity,
}
