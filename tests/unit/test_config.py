"""load_settings: defaults < YAML file < environment; every error is one ConfigError line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamrag.config import (
    ConfigError,
    MilvusConfig,
    PgvectorConfig,
    dump_settings,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("STREAMRAG_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamrag.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_defaults():
    settings = load_settings()

    assert settings.chunking.max_tokens == 160
    assert settings.chunking.overlap_tokens == 0
    assert settings.embedding.model == "bundled"


def test_store_kind_defaults_to_pgvector(monkeypatch, tmp_path):
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("STREAMRAG_STACK__WORK_DIR", str(tmp_path))
    store = load_settings().store
    assert isinstance(store, PgvectorConfig) and store.kind == "pgvector"
    assert store.security.password_file is None  # the stack has made none yet
    # The default store is the stack's PostgreSQL: its generated password file, by path.
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "postgres.password").write_text("s3cret")
    store = load_settings().store
    assert store.security.password_file == tmp_path / "secrets" / "postgres.password"
    assert "s3cret" not in dump_settings(load_settings())
    # A password source of the user's own wins.
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    assert load_settings().store.security.password_file is None


def test_yaml_file_values_are_used(tmp_path):
    path = write(tmp_path, "chunking:\n  max_tokens: 120\nkafka:\n  partitions: 4\n")

    settings = load_settings(path)

    assert (settings.chunking.max_tokens, settings.kafka.partitions) == (120, 4)


def test_config_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMRAG_CONFIG", str(write(tmp_path, "chunking:\n  max_tokens: 99\n")))

    assert load_settings().chunking.max_tokens == 99


def test_env_overrides_max_tokens(monkeypatch):
    monkeypatch.setenv("STREAMRAG_CHUNKING__MAX_TOKENS", "321")

    assert load_settings().chunking.max_tokens == 321


def test_env_beats_file_and_keeps_the_files_other_keys(tmp_path, monkeypatch):
    path = write(tmp_path, "chunking:\n  max_tokens: 100\n  overlap_tokens: 10\n")
    monkeypatch.setenv("STREAMRAG_CHUNKING__MAX_TOKENS", "300")

    chunking = load_settings(path).chunking

    assert (chunking.max_tokens, chunking.overlap_tokens) == (300, 10)


def test_keyword_overrides(tmp_path):
    assert load_settings(chunking__max_tokens=64).chunking.max_tokens == 64


@pytest.mark.parametrize("value", ["abc", "0", "16", "100000", "-5"])
def test_invalid_env_value_is_one_line_config_error(monkeypatch, value):
    monkeypatch.setenv("STREAMRAG_CHUNKING__MAX_TOKENS", value)

    with pytest.raises(ConfigError) as err:
        load_settings()

    assert "chunking.max_tokens" in assert_one_line(err)


def test_invalid_file_value_is_one_line_config_error(tmp_path):
    path = write(tmp_path, "kafka:\n  partitions: many\n")

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "kafka.partitions" in assert_one_line(err)


def test_unknown_key_is_rejected(tmp_path):
    path = write(tmp_path, "chunking:\n  max_tokenz: 100\n")

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "max_tokenz" in assert_one_line(err)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))

    assert "mapping" in assert_one_line(err)


def test_empty_yaml_file_means_defaults(tmp_path):
    assert load_settings(write(tmp_path, "")).chunking.max_tokens == 160


def test_invalid_yaml_is_one_line_config_error(tmp_path):
    path = write(tmp_path, "chunking: [unclosed\n  max_tokens: 1\n")

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "not valid YAML" in assert_one_line(err)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "absent.yaml")

    assert "cannot read" in assert_one_line(err)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(100, 50), (100, 80), (40, 20)])
def test_overlap_of_half_max_tokens_or_more_is_rejected(tmp_path, max_tokens, overlap):
    path = write(tmp_path, f"chunking:\n  max_tokens: {max_tokens}\n  overlap_tokens: {overlap}\n")

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "overlap" in assert_one_line(err)


def test_overlap_below_half_is_accepted(tmp_path):
    path = write(tmp_path, "chunking:\n  max_tokens: 100\n  overlap_tokens: 49\n")

    assert load_settings(path).chunking.overlap_tokens == 49


def test_kind_pgvector_selects_pgvector_config(tmp_path):
    path = write(tmp_path, "store:\n  kind: pgvector\n  table: my_chunks\n")

    store = load_settings(path).store

    assert isinstance(store, PgvectorConfig)
    assert store.table == "my_chunks"


def test_store_kind_from_environment(monkeypatch):
    monkeypatch.setenv("STREAMRAG_STORE__KIND", "pgvector")

    assert isinstance(load_settings().store, PgvectorConfig)


def test_store_override_without_kind_is_milvus(monkeypatch):
    monkeypatch.setenv("STREAMRAG_STORE__URI", "http://milvus:19530")

    store = load_settings().store

    assert isinstance(store, MilvusConfig)
    assert store.uri == "http://milvus:19530"


def test_pgvector_keys_are_rejected_for_milvus(tmp_path):
    path = write(tmp_path, "store:\n  kind: milvus\n  table: t\n")

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "table" in assert_one_line(err)


def test_unknown_store_kind_is_rejected(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "store:\n  kind: redis\n"))

    assert_one_line(err)


def test_override_into_an_empty_yaml_section_is_applied(tmp_path):
    path = write(tmp_path, "chunking:\n")

    assert load_settings(path, chunking__max_tokens=64).chunking.max_tokens == 64
