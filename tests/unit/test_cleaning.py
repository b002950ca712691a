"""clean(): deterministic plain text with headings as ``#`` lines and blank-line blocks."""

from __future__ import annotations

import pytest

from jobs.chunking.cleaning import clean, html_to_text, normalize
from streamrag.errors import LimitExceeded


def test_html_headings_become_hash_lines_and_blocks_are_separated_by_blank_lines():
    html = "<h1>Title</h1><p>First <b>para</b>.</p><h2>Part</h2><p>Second.</p>"

    text = clean(html, "html")

    assert text == "# Title\n\nFirst para.\n\n## Part\n\nSecond."


def test_html_list_items_are_separate_blocks():
    text = clean("<ul><li>alpha</li><li>beta</li></ul>", "html")

    assert text.split("\n\n") == ["alpha", "beta"]


def test_pretty_printed_html_heading_stays_on_one_line():
    html = "<h1>\n  Vector search\n</h1>\n<p>Body.</p>"

    assert clean(html, "html") == "# Vector search\n\nBody."


def test_html_table_cells_are_not_glued_together():
    html = "<table><tr><th>Setting</th><th>Default</th></tr><tr><td>M</td><td>16</td></tr></table>"

    words = clean(html, "html").split()

    assert words == ["Setting", "Default", "M", "16"]


def test_html_script_style_and_head_are_dropped():
    html = (
        "<html><head><title>T</title><style>p { color: red }</style></head><body>"
        "<script>var secret = 42;</script><p>Visible text.</p>"
        "<noscript>enable js</noscript></body></html>"
    )

    text = clean(html, "html")

    assert text == "Visible text."


def test_deeply_nested_html_does_not_crash():
    html = "<div>" * 5000 + "deep text" + "</div>" * 5000

    assert clean(html, "html") == "deep text"


def test_html_to_text_keeps_text_of_unknown_inline_tags():
    assert "inline" in html_to_text("<p>some <custom-tag>inline</custom-tag> text</p>")


def test_markdown_headings_become_hash_lines():
    md = "Heading\n=======\n\nIntro with *emphasis*.\n\n## Details\n\n- one\n- two\n"

    text = clean(md, "markdown")

    assert text == "# Heading\n\nIntro with emphasis.\n\n## Details\n\none\n\ntwo"


def test_markdown_code_block_text_is_kept():
    md = "# Config\n\n```properties\ncleanup.policy=compact\n```\n"

    assert clean(md, "markdown") == "# Config\n\ncleanup.policy=compact"


def test_nfkc_folds_ligatures_and_full_width_digits():
    assert normalize("ﬁle ｎｏ．１２３") == "file no.123"


def test_zero_width_characters_and_soft_hyphen_are_removed():
    assert normalize("zero\u200bwidth\u200c\u200d\u2060 jo\u00adin\ufeff") == "zerowidth join"


def test_control_characters_and_nul_become_spaces():
    text = normalize("a\x00b\x07c\x1bd\x7fe\x85f")

    assert text == "a b c d e f"
    assert all(ch.isprintable() for ch in text)


def test_crlf_and_cr_become_newlines():
    assert normalize("one\r\ntwo\rthree") == "one\ntwo\nthree"


def test_whitespace_is_collapsed_and_lines_trimmed():
    text = normalize("  many \t  spaces  \n\n\n\n\n  next\u00a0block  \n")

    assert text == "many spaces\n\nnext block"


def test_plain_text_is_only_normalized():
    assert clean("# not markup, just text\n\nsecond", "text") == "# not markup, just text\n\nsecond"


def test_mixed_scripts_emoji_and_rtl_text_survive():
    sample = "Ünïcödé 日本語テキスト 😀🚀 שלום עולם مرحبا بالعالم Ελληνικά"

    assert clean(sample, "text") == sample
    assert clean(f"<p>{sample}</p>", "html") == sample


def test_cleaning_is_deterministic_and_idempotent():
    html = "<h1>A</h1><p>x\u200b y</p><div><div>nested</div></div>"

    once = clean(html, "html")

    assert clean(html, "html") == once
    assert normalize(once) == once


def test_cdata_comments_and_declarations_are_not_text():
    html = (
        "<!DOCTYPE html><p>Kept.</p><![CDATA[hidden data]]><!-- a comment -->"
        "<?php echo 1; ?><p>Also kept.</p>"
    )

    assert clean(html, "html") == "Kept.\n\nAlso kept."


def test_markdown_block_quotes_nested_twenty_deep_keep_every_level():
    md = "\n".join(">" * depth + f" level {depth} words" for depth in range(1, 21))

    text = clean(md, "markdown")

    assert all(f"level {depth} words" in text for depth in range(1, 21))


def test_markdown_lists_nested_ten_deep_keep_every_item():
    md = "\n".join("  " * depth + f"- item {depth}" for depth in range(10))

    text = clean(md, "markdown")

    assert all(f"item {depth}" in text for depth in range(10))


def test_markdown_nested_past_the_limit_is_rejected_not_cut():
    md = "\n".join(">" * depth + f" level {depth}" for depth in range(1, 80))

    with pytest.raises(LimitExceeded, match="markdown_nesting=64"):
        clean(md, "markdown")


def test_html_nested_past_the_limit_is_rejected():
    html = "<div>" * 10_050 + "deep" + "</div>" * 10_050

    with pytest.raises(LimitExceeded, match="html_depth=10000"):
        clean(html, "html")


def test_deep_html_below_the_limit_keeps_its_text():
    # Walked without recursion or tree edits: bs4's inserts took minutes at this depth.
    html = "<ul><li>" * 4_900 + "deep item" + "</li></ul>" * 4_900

    assert "deep item" in clean(html, "html")


def test_heading_text_leaves_out_scripts_inside_it():
    assert clean("<h2>Real <script>var x;</script>title</h2>", "html") == "## Real title"
