"""The JVM that a local run starts (``streamrag run``, the demo, the bench): its heap and
its JIT come from the ``flink`` section, and options the user already gave in JVM_ARGS win."""

from __future__ import annotations

import pytest

from streamrag.config import ConfigError, load_settings
from streamrag.flink import local_jvm_args


def test_by_default_the_heap_is_bounded_and_only_c1_compiles():
    args = local_jvm_args(load_settings(), "").split()
    assert args == ["-Xmx1024m", "-XX:TieredStopAtLevel=1"]


def test_tiered_leaves_the_jvm_its_default_jit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STREAMRAG_FLINK__LOCAL_JIT", "tiered")
    monkeypatch.setenv("STREAMRAG_FLINK__LOCAL_HEAP_MB", "2048")
    assert local_jvm_args(load_settings(), "") == "-Xmx2048m"


def test_the_users_own_jvm_args_are_kept_and_decide_what_they_set():
    given = "-Xmx3g -XX:TieredStopAtLevel=4 -Dfoo=bar"
    assert local_jvm_args(load_settings(), given) == given
    assert local_jvm_args(load_settings(), "-XX:-TieredCompilation") == (
        "-XX:-TieredCompilation -Xmx1024m"
    )
    assert local_jvm_args(load_settings(), "-Dfoo=bar") == (
        "-Dfoo=bar -Xmx1024m -XX:TieredStopAtLevel=1"
    )


def test_an_unknown_jit_is_a_config_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STREAMRAG_FLINK__LOCAL_JIT", "c2")
    with pytest.raises(ConfigError, match="local_jit"):
        load_settings()
