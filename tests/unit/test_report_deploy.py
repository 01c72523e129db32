"""Every YAML/JSON file in deploy/ parses, and the manifests agree with the contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tokenpulse.config import (
    TOPIC_DLQ,
    TOPIC_QUOTA_ALERTS,
    TOPIC_QUOTA_STATE,
    TOPIC_QUOTAS,
    TOPIC_USAGE,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [json.loads(text)]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _k8s() -> list[dict[str, Any]]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in _docs(p)]


def test_every_yaml_and_json_file_in_deploy_parses() -> None:
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in (".yaml", ".yml", ".json") and "__pycache__" not in p.parts
    ]
    assert len(files) >= 12
    for path in files:
        assert _docs(path), f"{path} is empty"


def test_kafka_topics_are_the_five_contract_topics() -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in _k8s() if d["kind"] == "KafkaTopic"}
    assert set(topics) == {
        TOPIC_USAGE,
        TOPIC_DLQ,
        TOPIC_QUOTA_ALERTS,
        TOPIC_QUOTA_STATE,
        TOPIC_QUOTAS,
    }
    assert topics[TOPIC_QUOTAS]["config"]["cleanup.policy"] == "compact"
    assert topics[TOPIC_QUOTA_STATE]["config"]["cleanup.policy"] == "compact"
    assert topics[TOPIC_QUOTAS]["partitions"] == 1


def test_worker_fits_the_partitions_and_has_a_budget_and_resources() -> None:
    docs = _k8s()
    (worker,) = [d for d in docs if d["kind"] == "Deployment"]
    partitions = next(
        d["spec"]["partitions"]
        for d in docs
        if d["kind"] == "KafkaTopic" and d["spec"]["topicName"] == TOPIC_USAGE
    )
    assert 1 <= worker["spec"]["replicas"] <= partitions
    labels = worker["spec"]["selector"]["matchLabels"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert [p["spec"]["selector"]["matchLabels"] for p in pdbs] == [labels]
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert c["resources"]["requests"], (d["metadata"]["name"], c["name"])
                assert c["resources"]["limits"]["memory"], (d["metadata"]["name"], c["name"])
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "tokenpulse-clickhouse"}}]
    env = {e["name"] for e in container["env"]}
    assert "CLICKHOUSE_URL" not in env  # secrets only through the Secret


def test_grafana_dashboards_use_the_provisioned_data_source() -> None:
    (ds,) = _docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml")
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["type"] == "grafana-clickhouse-datasource"
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        (dash,) = _docs(path)
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"][0]["rawSql"].strip(), (path.name, panel["title"])


def test_compose_provisions_grafana() -> None:
    (compose,) = _docs(DEPLOY / "docker-compose.yml")
    grafana = compose["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = " ".join(grafana["volumes"])
    assert "./grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./grafana/dashboards:" in mounts
