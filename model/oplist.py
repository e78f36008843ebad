"""Read the operator list of a ``.tflite`` flatbuffer, without TensorFlow.

Used by the exporter to refuse artifacts with Flex (``SELECT_TF_OPS``) or custom ops,
and by ``fedkb model check`` to report the ops. The schema bindings come from
``ai_edge_litert`` (flatbuffers only).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ai_edge_litert import schema_py_generated as schema

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}


@dataclass(frozen=True)
class OpReport:
    """Which operators a model uses (name -> number of uses, over all subgraphs)."""

    counts: dict[str, int]
    non_builtin: tuple[str, ...]  # Flex or custom ops, by name ("FlexBroadcastGradientArgs")

    @property
    def builtin_only(self) -> bool:
        return not self.non_builtin

    @property
    def names(self) -> list[str]:
        return sorted(self.counts)


def _op_name(code) -> tuple[str, bool]:
    """(name, is_builtin) of one OperatorCode."""
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        name = custom.decode("utf-8", "replace") if custom else "CUSTOM"
        return name, False
    return _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"), True


def op_report(model_bytes: bytes) -> OpReport:
    """Count the operators of every subgraph of a serialized LiteRT model."""
    model = schema.Model.GetRootAsModel(bytearray(model_bytes), 0)
    codes = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            counts[codes[sg.Operators(o).OpcodeIndex()][0]] += 1
    non_builtin = tuple(sorted({n for n, ok in codes if not ok}))
    return OpReport(dict(sorted(counts.items())), non_builtin)
