"""Filters: values, never code; checked when made."""

from __future__ import annotations

import pytest

from streamrag.stores.base import Filters, StoreError


def test_filters_accept_known_fields_and_identifier_metadata_keys():
    f = Filters(
        fields={"doc_id": "d", "source": "documents", "model_id": "m"},
        metadata={"lang": "en", "_tier2": 3, "public": True},
    )

    assert f.fields["doc_id"] == "d" and f.metadata["lang"] == "en"


def test_filters_default_to_empty():
    assert Filters().fields == {} and Filters().metadata == {}


@pytest.mark.parametrize("name", ["text", "vector", "doc_id OR 1=1", ""])
def test_filters_reject_unknown_fields(name):
    with pytest.raises(StoreError, match="cannot filter"):
        Filters(fields={name: "x"})


@pytest.mark.parametrize(
    "key",
    [
        'a"] or 1==1 or ["x',
        "lang'; DROP TABLE chunks; --",
        "1abc",
        "a-b",
        "a.b",
        "",
        "x" * 65,
        "ünïcode",
    ],
    ids=repr,
)
def test_filters_reject_metadata_keys_that_are_not_plain_identifiers(key):
    with pytest.raises(StoreError, match="plain identifier"):
        Filters(metadata={key: "v"})


def test_filters_accept_a_64_character_metadata_key():
    assert Filters(metadata={"k" * 64: 1}).metadata == {"k" * 64: 1}


def test_filters_reject_a_metadata_key_with_a_trailing_newline():
    with pytest.raises(StoreError, match="plain identifier"):
        Filters(metadata={"lang\n": "en"})


def test_rejected_metadata_key_is_quoted_in_a_one_line_message():
    with pytest.raises(StoreError) as err:
        Filters(metadata={'a"]\nor 1==1': 1})

    assert "\n" not in str(err.value)
