"""The local multi-node mode's rules: broker ports and quorum, replication, the stack's
processes, and the Flink cluster's TaskManagers (no process is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrag.config import Settings, load_settings
from streamrag.local import cluster
from streamrag.local.kafka import Kafka, bootstrap_servers, broker_ports, replication
from streamrag.local.service import StackError
from streamrag.local.stack import _instances


def settings(tmp_path: Path, brokers: int) -> Settings:
    s = load_settings()
    s.stack.work_dir = tmp_path
    s.stack.brokers = brokers
    return s


def properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_each_broker_has_two_ports_of_its_own(tmp_path: Path):
    s = settings(tmp_path, 3)
    ports = [p for node in (1, 2, 3) for p in broker_ports(s, node)]
    assert ports == [19092, 19093, 19094, 19095, 19096, 19097]
    assert bootstrap_servers(s) == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert bootstrap_servers(settings(tmp_path, 1)) == "127.0.0.1:19092"


@pytest.mark.parametrize(
    ("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))]
)
def test_replication_allows_one_broker_to_die_from_three_on(brokers: int, expected: tuple):
    assert replication(brokers) == expected


def test_the_stack_runs_one_process_per_broker_in_start_order(tmp_path: Path):
    names = list(_instances(settings(tmp_path, 3)))
    assert names == [
        "postgres", "kafka", "kafka-2", "kafka-3", "connect", "milvus", "milvus-server",
    ]  # fmt: skip
    one = _instances(settings(tmp_path, 1))
    assert list(one) == ["postgres", "kafka", "connect", "milvus", "milvus-server"]


def test_three_brokers_form_a_static_quorum_with_replicated_topics(tmp_path: Path):
    s = settings(tmp_path, 3)
    node = Kafka(s, 2)
    node.home.mkdir(parents=True)
    (node.home / "data").mkdir()
    (node.home / "data" / "meta.properties").write_text("formatted\n")
    (tmp_path / "kafka").mkdir(exist_ok=True)
    (tmp_path / "kafka" / "brokers").write_text("3\n")
    node.prepare()  # already formatted: writes its config only
    props = properties(node.properties)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"


def test_data_formatted_for_another_number_of_brokers_is_refused_in_one_line(tmp_path: Path):
    node = Kafka(settings(tmp_path, 3), 1)
    (node.home / "data").mkdir(parents=True)
    (node.home / "data" / "meta.properties").write_text("formatted\n")  # no count: 1 broker
    with pytest.raises(StackError, match="1-broker stack: start it with --brokers 1"):
        node.prepare()


def test_several_taskmanagers_spread_the_slots_and_are_noticed_when_lost(tmp_path: Path):
    s = settings(tmp_path, 1)
    config = yaml.safe_load((cluster.write_conf(s, taskmanagers=2) / "config.yaml").read_text())
    assert config["taskmanager"]["numberOfTaskSlots"] == 2
    assert config["taskmanager"]["load-balance"] == {"mode": "SLOTS"}
    assert config["heartbeat"]["timeout"] <= 15000
    single = yaml.safe_load((cluster.write_conf(s) / "config.yaml").read_text())
    assert "load-balance" not in single["taskmanager"]


def test_a_wrong_number_of_taskmanagers_is_one_line(tmp_path: Path):
    with pytest.raises(cluster.ClusterError, match="--taskmanagers must be 1 to 4, not 9"):
        cluster.up(settings(tmp_path, 1), taskmanagers=9)
