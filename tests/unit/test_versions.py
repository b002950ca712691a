"""Every version is pinned once, in pyproject.toml, and the pins fit together."""

import re
import tomllib

import yaml

from streamrag.config import PROJECT_ROOT
from streamrag.local.versions import main, maven_properties, python_pins


def test_every_python_dependency_is_pinned_exactly():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]


def test_maven_gets_every_version_the_pom_uses_and_the_pom_pins_none():
    pom = (PROJECT_ROOT / "pom.xml").read_text()
    used = set(re.findall(r"\$\{([\w.-]+\.version)\}", pom))
    assert used <= set(maven_properties()), used - set(maven_properties())
    assert not re.search(r"<version>\d", pom.split("</modelVersion>")[1].split("</version>", 1)[1])


def test_flink_and_its_kafka_connector_come_from_the_pyflink_pin():
    props = maven_properties()
    assert props["flink.version"] == python_pins()["apache-flink"]
    flink_minor = ".".join(props["flink.version"].split(".")[:2])
    assert re.fullmatch(
        rf"\d+\.\d+\.\d+-{re.escape(flink_minor)}", props["flink-kafka-connector.version"]
    )


def test_the_k8s_deployment_names_the_same_flink():
    flink = python_pins()["apache-flink"]
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    assert deployment["spec"]["flinkVersion"] == "v" + "_".join(flink.split(".")[:2])
    assert deployment["spec"]["job"]["jarURI"].endswith(f"/flink-python-{flink}.jar")


def test_the_maven_arguments_are_printed_for_make(capsys):
    assert main(["maven"]) == 0
    args = capsys.readouterr().out.split()
    assert "-Dkafka.version=" + maven_properties()["kafka.version"] in args
    assert main([]) == 2
