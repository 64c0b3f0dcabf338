"""A TFLite flatbuffer being built: tensors, constant buffers, operators, metadata and a signature, written
with the schema bindings the LiteRT runtime ships (``ai_edge_litert.schema_py_generated``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import INPUT_NAME, META_KEY, OUTPUT_NAME


class TFLiteGraph:
    """A TFLite subgraph being built: tensors, constant buffers and operators."""

    def __init__(self, schema: Any) -> None:
        self.s = schema
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty sentinel of every activation
        self.operators: list[Any] = []
        self.codes: dict[int, int] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dynamic_batch: bool, data: np.ndarray | None = None,
               dtype: int | None = None) -> int:
        """A new tensor (a constant when ``data`` is given); its index."""
        t = self.s.TensorT()
        t.name, t.shape = name.encode(), list(shape)
        t.type = dtype if dtype is not None else (self.s.TensorType.INT32 if data is not None and data.dtype == np.int32
                                                  else self.s.TensorType.FLOAT32)
        if dynamic_batch and shape:
            t.shapeSignature = [-1, *shape[1:]]
        if data is not None:
            buf = self.s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray) -> int:
        """A constant tensor holding ``data`` (float32 or int32)."""
        data = data.astype(np.int32 if data.dtype.kind in "iu" else np.float32)
        return self.tensor(name, data.shape, False, data)

    def op(self, code: str, inputs: list[int], outputs: list[int], options: Any = None, options_kind: str = "") -> None:
        """Append an operator of builtin ``code`` (``CONV_2D``) with its options record."""
        builtin = getattr(self.s.BuiltinOperator, code)
        self.codes.setdefault(builtin, len(self.codes))
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[builtin], inputs, outputs
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = getattr(self.s.BuiltinOptions, options_kind), options
        self.operators.append(o)

    def options(self, kind: str, **fields: Any) -> Any:
        """An options record (``Conv2DOptions``) with its fields set."""
        record = getattr(self.s, kind + "T")()
        for key, value in fields.items():
            setattr(record, key, value)
        return record

    def serialize(self, inputs: list[int], outputs: list[int], meta: bytes) -> bytes:
        """The whole model as flatbuffer bytes (file identifier ``TFL3``)."""
        import flatbuffers

        s = self.s
        graph = s.SubGraphT()
        graph.tensors, graph.inputs, graph.outputs, graph.operators = self.tensors, inputs, outputs, self.operators
        graph.name = b"main"
        meta_buffer = s.BufferT()
        meta_buffer.data = np.frombuffer(meta, dtype=np.uint8)
        self.buffers.append(meta_buffer)
        metadata = s.MetadataT()
        metadata.name, metadata.buffer = META_KEY.encode(), len(self.buffers) - 1
        signature = s.SignatureDefT()
        signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
        signature.inputs, signature.outputs = ([self._map(name, i) for i in ids] for name, ids in
                                               ((INPUT_NAME, inputs), (OUTPUT_NAME, outputs)))
        model = s.ModelT()
        model.version, model.description = 3, b"cnnpipe: ONNX to LiteRT"
        model.subgraphs, model.buffers, model.metadata, model.signatureDefs = [graph], self.buffers, [metadata], [signature]
        model.operatorCodes = [self._code(b) for b in self.codes]
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _map(self, name: str, index: int) -> Any:
        mapping = self.s.TensorMapT()
        mapping.name, mapping.tensorIndex = name.encode(), index
        return mapping

    def _code(self, builtin: int) -> Any:
        opcode = self.s.OperatorCodeT()
        # 127 in the deprecated field: "read builtin_code" (for operators numbered past it)
        opcode.builtinCode, opcode.version, opcode.deprecatedBuiltinCode = builtin, 1, min(builtin, 127)
        return opcode
