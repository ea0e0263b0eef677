"""A 1→N transform used by the tests (registered through CURATE_STAGES in conftest.py):
each document with several paragraphs is replaced by one new document per paragraph;
a document whose text starts with "KEEP" also stays itself. Exercises created
documents end to end (ids, parent_id, lineage, outputs, resume)."""

from __future__ import annotations

import pyarrow as pa

from filters.base import DROP, KEEP, TEXT, Fitted, NewDoc, StageParams, Transformed, TransformStage


class SplitParams(StageParams):
    separator: str = "\n\n"


class SplitParagraphsTestV1(TransformStage):
    name = "split_paragraphs_test_v1"
    Params = SplitParams
    creates_documents = True
    reasons = ("split.replaced",)

    def transform(self, docs: pa.Table, fitted: Fitted | None) -> Transformed:
        action, reason, created, parts_count = [], [], [], []
        for i, text in enumerate(docs[TEXT].to_pylist()):
            parts = [p.strip() for p in (text or "").split(self.params.separator) if p.strip()]
            parts_count.append(len(parts))
            if len(parts) < 2:
                action.append(KEEP)
                reason.append(None)
                continue
            keep_source = text.startswith("KEEP")
            action.append(KEEP if keep_source else DROP)
            reason.append(None if keep_source else "split.replaced")
            created += [NewDoc(parent=i, variant=f"p{k}", text=p) for k, p in enumerate(parts)]
        return Transformed(action=action, text=[None] * len(action), reason=reason,
                           scores=pa.table({"paragraphs": pa.array(parts_count, pa.int64())}),
                           created=tuple(created))
