"""``input_v1``: the built-in first stage. Null and blank texts are dropped with a
reason (so they stay visible in lineage) instead of crashing later stages."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from filters.base import TEXT, Fitted, Selection, Stage, StageParams


class InputCheckV1(Stage[StageParams]):
    name = "input_v1"
    reasons = ("input.null_text", "input.empty_text")

    def score(self, docs: pa.Table) -> pa.Table:
        text = docs[TEXT]
        chars = pc.utf8_length(text)
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        return pa.table({
            "chars": pc.fill_null(chars, 0),
            "is_null": pc.is_null(text),
            "is_blank": blank,
        })

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        reasons: list[str | None] = []
        for is_null, is_blank in zip(scores["is_null"].to_pylist(), scores["is_blank"].to_pylist(), strict=True):
            if is_null:
                reasons.append("input.null_text")
            elif is_blank:
                reasons.append("input.empty_text")
            else:
                reasons.append(None)
        return Selection(keep=[r is None for r in reasons], reason=reasons)
