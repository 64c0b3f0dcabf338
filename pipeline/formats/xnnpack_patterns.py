"""XNNPACK's two pattern-matching passes, without building patterns that cannot match.

``ConvertToUpsampleBilinear2d`` and ``ConvertToSDPAPass`` match their graph patterns (made by
exporting and lowering small modules, about 14 s of every process's first lowering) against
each delegated partition. A pattern matches only a graph that holds every operator of the
pattern, so for a partition without the operators every pattern holds (``ANCHORS``) the
pattern list is empty and the pass runs as it would otherwise: same graph, same bytes.
``tests/test_formats.py`` builds the real patterns and checks both facts.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PATTERNS = "executorch.backends.xnnpack.partition.graphs"
# pass class name -> (module that makes its patterns, that module's function the pass calls, operators in every pattern)
ANCHORS: dict[str, tuple[str, str, frozenset[str]]] = {
    "ConvertToUpsampleBilinear2d": ("bilinear_2d", "get_graphs_dict", frozenset({"aten.upsample_bilinear2d.vec"})),
    "ConvertToSDPAPass": ("sdpa", "get_graphs", frozenset({"aten._softmax.default", "aten.bmm.default"})),
}


def operators(graph_module: Any) -> set[str]:
    """The names of the operators a graph calls (``aten.bmm.default``)."""
    return {getattr(n.target, "__name__", str(n.target)) for n in graph_module.graph.nodes if n.op == "call_function"}


@contextmanager
def unmatchable_patterns_skipped() -> Iterator[None]:
    """While lowering: each pass above gets no patterns for a partition that lacks their operators."""
    from executorch.backends.xnnpack import _passes

    originals = {}
    for name, (module, function, anchors) in ANCHORS.items():
        cls = getattr(_passes, name)
        originals[cls] = cls.call
        cls.call = _guarded(cls.call, importlib.import_module(f"{PATTERNS}.{module}"), function, anchors)
    try:
        yield
    finally:
        for cls, call in originals.items():
            cls.call = call


def _guarded(call: Any, patterns: types.ModuleType, function: str, anchors: frozenset[str]) -> Any:
    """``call`` (a pass's), with ``patterns.function`` answering "no patterns" for a graph that lacks ``anchors``."""

    def guarded(self: Any, graph_module: Any) -> Any:
        if anchors <= operators(graph_module):
            return call(self, graph_module)
        make = getattr(patterns, function)
        setattr(patterns, function, lambda: {} if function.endswith("_dict") else [])
        try:
            return call(self, graph_module)
        finally:
            setattr(patterns, function, make)

    return guarded
