"""The generation cache (groundwork of rephrase_v1): keys change with anything that changes
a generation, records survive a new process, and a record is never half written."""

from __future__ import annotations

import pytest

from filters.lm.generation_cache import GenerationCache, generation_key

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Rephrase: the cat sat."}]
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 400, "seed": 0}


def test_the_key_changes_with_model_messages_and_sampling_only():
    key = generation_key("smollm2:abc", MESSAGES, SAMPLING)
    assert key == generation_key("smollm2:abc", [dict(m) for m in MESSAGES], dict(reversed(SAMPLING.items())))
    assert key != generation_key("smollm2:abd", MESSAGES, SAMPLING)
    assert key != generation_key("smollm2:abc", MESSAGES[:1] + [{"role": "user", "content": "Rephrase: a cat sat."}],
                                 SAMPLING)
    assert key != generation_key("smollm2:abc", MESSAGES, {**SAMPLING, "seed": 1})


def test_a_record_is_found_again_by_a_new_cache_and_hits_are_counted(tmp_path):
    key = generation_key("m", MESSAGES, SAMPLING)
    first = GenerationCache(tmp_path / "cache")
    assert first.get(key) is None and first.misses == 1
    record = {"text": "A cat was sitting.", "finish_reason": "stop", "completion_tokens": 6}
    first.put(key, record)
    again = GenerationCache(tmp_path / "cache")  # e.g. the rerun after a crash
    assert again.get(key) == record and (again.hits, again.misses) == (1, 0)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ValueError, match="not a generation key"):
        again.get("../../etc/passwd")
