"""Where parity breaks: compare an ONNX file's intermediate tensors with PyTorch's module outputs.

The dynamo exporter records, on every node, the module path it came from
(``pkg.torch.onnx.name_scopes``: ``['', 'features', 'features.3', 'conv2d_1']``). A module's
output in the ONNX graph is the output of the last node inside its scope. Every such tensor
is exposed as a graph output and run in onnxruntime on the same images that PyTorch runs
with a forward hook on every module; modules are then compared in the order PyTorch
finished them (a layer before the block that holds it), and the first whose output departs
by more than ``limit`` relative to its largest activation is named.
"""

from __future__ import annotations

import ast
from collections import Counter
from typing import Any

import numpy as np

SCOPES = "pkg.torch.onnx.name_scopes"
SHOWN = 40  # layers listed in the report


def module_outputs(graph: Any) -> dict[str, tuple[str, str]]:
    """Module path -> (the ONNX tensor that is its output, the node that makes it), from node metadata."""
    found: dict[str, tuple[str, str]] = {}
    for node in graph.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPES not in meta or not node.output:
            continue
        try:
            scopes = ast.literal_eval(meta[SCOPES])
        except (ValueError, SyntaxError):
            continue
        for module in scopes[1:-1]:  # every enclosing module; the last scope is the node itself
            found[module] = (node.output[0], node.name)
    return found


def _torch_outputs(model: Any, x: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(module path, type, output) for every module that returns one tensor, in the order they finished."""
    import torch

    seen: list[tuple[str, str, np.ndarray]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod: Any, args: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                seen.append((name, type(mod).__name__, out.detach().float().numpy().copy()))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return seen


def onnx_intermediates(path: Any, x: np.ndarray) -> dict[str, Any]:
    """Every module's output tensor in the ONNX file at ``path`` on images ``x`` (run in a worker):
    ``{"outputs": module -> (tensor, node), "values": tensor -> array}``."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path))
    outputs = module_outputs(graph)
    present = {o.name for o in graph.graph.output}
    for tensor, _ in dict.fromkeys(outputs.values()):
        if tensor not in present:
            graph.graph.output.append(onnx.ValueInfoProto(name=tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    return {"outputs": outputs, "values": values}


def compare_layers(found: dict[str, Any], model: Any, x: np.ndarray, limit: float) -> dict[str, Any]:
    """The layers of ``model`` compared with an ONNX file's intermediate tensors (``onnx_intermediates``
    on images ``x``) and the first whose output departs: ``max|onnx - torch| > limit * max|torch|``."""
    outputs, values = found["outputs"], found["values"]
    layers, first = [], None
    ran = _torch_outputs(model, x)
    calls = Counter(module for module, _, _ in ran)
    for module, kind, ref in ran:
        if module not in outputs or calls[module] > 1:  # a module called twice has no single output
            continue
        tensor, node = outputs[module]
        if tensor not in values:
            continue
        got = np.asarray(values[tensor], dtype=np.float32)
        if got.shape != ref.shape:
            continue
        diff = np.abs(got.astype(np.float64) - ref)
        scale = float(np.abs(ref).max())
        worst = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        relative = worst / max(scale, 1e-12)
        row = {"layer": module, "module": kind, "onnx_node": node, "max_abs_diff": worst if np.isfinite(worst) else None,
               "max_abs_activation": scale, "relative": relative if np.isfinite(relative) else None}
        layers.append(row)
        if first is None and not relative <= limit:
            first = row
    return {
        "method": "onnxruntime intermediate outputs against PyTorch module outputs (node metadata name_scopes)",
        "images": len(x), "limit": limit, "layers_compared": len(layers), "first_divergent": first,
        "layers": layers[:SHOWN],
    }
