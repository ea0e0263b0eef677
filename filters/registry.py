"""Every stage the product knows, by versioned name."""

from __future__ import annotations

from filters.base import Stage
from filters.exact_dedup import ExactDedupV1
from filters.input_check import InputCheckV1
from filters.minhash import MinHashDedupV1
from filters.perplexity import PerplexityV1
from filters.quality_rules import QualityRulesV1

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (InputCheckV1, ExactDedupV1, QualityRulesV1, MinHashDedupV1, PerplexityV1)
}

# Runs first in every job so null/empty texts are recorded with a reason, never lost.
BUILTIN_FIRST_STAGE = InputCheckV1.name


def get_stage(name: str) -> type[Stage]:
    try:
        return STAGES[name]
    except KeyError:
        known = ", ".join(sorted(n for n in STAGES if n != BUILTIN_FIRST_STAGE))
        raise KeyError(f"unknown stage {name!r}; known stages: {known}") from None
