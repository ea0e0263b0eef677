import json

import pytest

from workers.spec import SpecError, load_spec, local_paths, parse_spec

BASE = {"name": "j", "inputs": ["x/*.parquet"], "output": "out", "stages": [{"stage": "quality_rules_v1"}]}


def spec(**changes):
    return {**BASE, **changes}


def error_of(data) -> str:
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    return str(exc.value)


def test_valid_spec_fills_defaults_and_hashes_canonically():
    s = parse_spec(spec())
    assert s.columns.text == "text" and s.columns.id == "id"
    assert s.stages[0].params["min_words"] == 50  # stage defaults are materialised into the spec
    # Same content, different key order and explicit defaults -> same hash.
    same = parse_spec({"stages": [{"stage": "quality_rules_v1", "params": {"min_words": 50}}],
                       "output": "out", "inputs": ["x/*.parquet"], "name": "j"})
    assert s.spec_hash() == same.spec_hash()
    assert s.job_id() == f"j-{s.spec_hash()[:10]}"
    assert parse_spec(spec(stages=[{"stage": "quality_rules_v1", "params": {"min_words": 10}}])).spec_hash() != (
        s.spec_hash()
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec(stages=[{"stage": "quality_rules_v1", "params": {"min_words": "many"}}]),
         "stages.0: params.min_words: Input should be a valid integer"),
        (spec(stages=[{"stage": "quality_rules_v1", "params": {"min_wrods": 3}}]),
         "stages.0: params.min_wrods: Extra inputs are not permitted"),
        (spec(stages=[{"stage": "minhash_v9"}]), "stages.0: unknown stage 'minhash_v9'; known stages:"),
        (spec(stages=[]), "stages: List should have at least 1 item"),
        (spec(inputs=[]), "inputs: List should have at least 1 item"),
        (spec(name="bad name!"), "name: String should match pattern"),
        (spec(output="s3://bucket/out"), "output: only local output folders are supported"),
        (spec(colums={"text": "body"}), "colums: Extra inputs are not permitted"),
        ({k: v for k, v in BASE.items() if k != "output"}, "output: Field required"),
        (spec(stages=[{"stage": "input_v1"}]), "input_v1 runs first in every job"),
        (spec(execution={"num_workers": 0}), "execution.num_workers: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_specs_name_the_field(data, expected):
    assert expected in error_of(data)


def test_load_yaml_and_json(tmp_path):
    y = tmp_path / "job.yaml"
    y.write_text("name: j\ninputs: [a.parquet]\noutput: out\nstages:\n  - stage: exact_dedup_v1\n")
    j = tmp_path / "job.json"
    j.write_text(json.dumps(spec()))
    assert load_spec(y).stages[0].stage == "exact_dedup_v1"
    assert load_spec(j).name == "j"


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml is not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read job spec"):
        load_spec(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)


def test_parsing_never_touches_paths_and_local_paths_resolves_them(tmp_path):
    ppl = {"stage": "perplexity_v1", "params": {"backend": "kenlm", "model": "models/lm.arpa"}}
    s = parse_spec(spec(inputs=["in/*.parquet"], output="out", stages=[ppl]))  # no file exists: parsing is fine
    with pytest.raises(SpecError, match="stages.0.params.model: file not found: models/lm.arpa"):
        local_paths(s, base=tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lm.arpa").write_text("\\data\\\n")
    resolved = local_paths(s, base=tmp_path)
    assert resolved.stages[0].params["model"] == str(tmp_path / "models" / "lm.arpa")
    assert resolved.inputs == [str(tmp_path / "in" / "*.parquet")] and resolved.output == str(tmp_path / "out")
    bundled = local_paths(parse_spec(spec(stages=[{"stage": "perplexity_v1"}])), base=tmp_path)
    assert bundled.stages[0].params["model"] == "smollm2-135m"  # a bundled name is not a path
    with pytest.raises(SpecError, match="control character"):
        local_paths(parse_spec(spec(inputs=["a\u0000b.parquet"])), base=tmp_path)
