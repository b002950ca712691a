"""Tokens and tenant scoping of the read side (streamrag.serve.auth), without services."""

from __future__ import annotations

import pytest

from streamrag.errors import UserError
from streamrag.serve.auth import AuthError, Forbidden, Principal, TokenBook
from streamrag.stores.base import Filters

ALL = "all-tenants-token-0123456789"
ACME = "acme-token-0123456789abcdef"


@pytest.fixture
def book(tmp_path) -> TokenBook:
    path = tmp_path / "tokens"
    path.write_text(f"# who reads what\n* {ALL}\n\nacme {ACME}  # the acme app\n")
    return TokenBook.load(path, env={})


def test_tokens_map_to_their_tenant(book):
    assert book.verify(ALL) == Principal(None)
    assert book.verify(ACME) == Principal("acme")
    assert book.verify_header(f"Bearer {ACME}") == Principal("acme")
    assert book.verify_header(f"bearer {ALL}") == Principal(None)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {ACME}", f"Bearer {ACME}x", ACME]
)
def test_missing_or_unknown_tokens_are_refused(book, header):
    with pytest.raises(AuthError):
        book.verify_header(header)


def test_only_digests_are_kept(book):
    held = repr(vars(book))
    assert ACME not in held and ALL not in held


def test_tokens_from_the_environment(tmp_path):
    book = TokenBook.load(None, env={"STREAMRAG_TOKENS": f"acme:{ACME}, *:{ALL}"})
    assert book.verify(ACME) == Principal("acme") and book.verify(ALL) == Principal(None)
    path = tmp_path / "t"
    path.write_text(f"globex {'g' * 20}\n")
    both = TokenBook.load(
        None, env={"STREAMRAG_TOKENS_FILE": str(path), "STREAMRAG_TOKENS": f"acme:{ACME}"}
    )
    assert len(both) == 2 and both.verify("g" * 20) == Principal("globex")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no API tokens"),
        ("acme short\n", "shorter than 16"),
        ("acme\n", "expected '<tenant> <token>'"),
        ("acme a b c\n", "expected '<tenant> <token>'"),
    ],
)
def test_bad_token_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        TokenBook.load(path, env={})
    assert "\n" not in str(e.value)


def test_a_missing_tokens_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot read tokens file"):
        TokenBook.load(tmp_path / "nope", env={})


def test_a_tenant_token_adds_its_tenant_to_every_filter():
    scoped = Principal("acme").scope(Filters(fields={"doc_id": "d"}, metadata={"lang": "en"}))
    assert scoped == Filters(fields={"doc_id": "d"}, metadata={"lang": "en", "tenant": "acme"})
    assert Principal("acme").scope(Filters()).metadata == {"tenant": "acme"}


@pytest.mark.parametrize("tenant", ["acme", "globex", "*"])
def test_a_tenant_token_may_not_filter_on_tenant(tenant):
    with pytest.raises(Forbidden, match="tenant"):
        Principal("acme").scope(Filters(metadata={"tenant": tenant}))


def test_the_all_tenants_token_filters_as_asked():
    filters = Filters(metadata={"tenant": "globex"})
    assert Principal(None).scope(filters) is filters
