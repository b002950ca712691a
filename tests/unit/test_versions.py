"""The two pin files (pyproject.toml for Python, pom.xml for the JVM) agree on Flink."""

import re
import tomllib
import xml.etree.ElementTree as ET

from streamrag.config import PROJECT_ROOT

NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pom_property(name: str) -> str:
    root = ET.parse(PROJECT_ROOT / "pom.xml").getroot()
    node = root.find(f"m:properties/m:{name}", NS)
    assert node is not None and node.text, f"pom.xml has no <{name}>"
    return node.text


def test_pyflink_matches_the_flink_version_of_the_pom():
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pyflink,) = [d for d in deps if d.startswith("apache-flink==")]
    assert pyflink.split("==")[1] == _pom_property("flink.version")


def test_kafka_connector_is_built_for_that_flink_minor():
    flink_minor = ".".join(_pom_property("flink.version").split(".")[:2])
    connector = _pom_property("flink.kafka.connector.version")
    assert re.fullmatch(rf"\d+\.\d+\.\d+-{re.escape(flink_minor)}", connector)


def test_every_python_dependency_is_pinned_exactly():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]
