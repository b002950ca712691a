"""clean(): deterministic text of blocks (headings as ``#`` lines, code kept exactly),
the page's main content only."""

from __future__ import annotations

import pytest

from jobs.chunking.blocks import normalize_text as normalize
from jobs.chunking.cleaning import clean as clean_doc
from streamrag.errors import BadRecord, LimitExceeded


def clean(text: str, content_type: str = "text") -> str:
    return clean_doc(text, content_type).text


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


def test_html_table_cells_are_not_glued_together_and_rows_keep_their_lines():
    html = "<table><tr><th>Setting</th><th>Default</th></tr><tr><td>M</td><td>16</td></tr></table>"

    assert clean(html, "html") == "Setting | Default\nM | 16"


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


def test_html_keeps_text_of_unknown_inline_tags():
    assert clean("<p>some <custom-tag>inline</custom-tag> text</p>", "html") == "some inline text"


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
    text = clean("  many \t  spaces  \n\n\n\n\n  next\u00a0block  \n", "text")

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
    assert clean(once, "text") == once


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


# Main content: what generated documentation wraps around it is not text worth embedding.

DOCBOOK_PAGE = """<html><body>
<div class="navheader"><table><tr><td><a accesskey="p" href="a.html">Prev</a></td>
<th>Chapter 3. Logs</th><td><a accesskey="n" href="c.html">Next</a></td></tr></table></div>
<div class="chapter"><div class="titlepage"><h2 class="title">Chapter 3. Logs</h2></div>
<div class="toc"><p><b>Table of Contents</b></p><dl><dt><a href="#a">3.1. Segments</a></dt>
<dt><a href="#b">3.2. Compaction</a></dt></dl></div>
<p>The log is an ordered sequence of records.</p></div>
<div class="navfooter"><table><tr><td><a href="a.html">Prev</a></td><td><a href="i.html">Up</a>
</td><td><a href="index.html">Home</a></td><td><a href="c.html">Next</a></td></tr></table></div>
</body></html>"""

SPHINX_PAGE = """<html><body>
<div class="related" role="navigation"><ul><li><a href="genindex.html">index</a></li>
<li><a href="next.html">next</a> |</li></ul></div>
<div class="document"><div class="body" role="main">
<section id="logs"><h1>Logs<a class="headerlink" href="#logs">¶</a></h1>
<nav class="contents local" id="contents"><ul><li><a href="#x">Segments</a></li></ul></nav>
<p>The log is an ordered sequence of records.</p>
<div class="toctree-wrapper compound"><ul><li><a href="seg.html">Segments</a></li></ul></div>
</section></div></div>
<div class="sphinxsidebar" role="navigation"><h3>Table of Contents</h3><ul><li>Logs</li></ul></div>
<div class="footer">© Copyright 2026. Created using Sphinx.</div>
</body></html>"""


def test_navigation_bars_and_tables_of_contents_are_dropped():
    assert (
        clean(DOCBOOK_PAGE, "html")
        == "## Chapter 3. Logs\n\nThe log is an ordered sequence of records."
    )


def test_only_the_main_role_of_a_sphinx_page_is_read():
    assert clean(SPHINX_PAGE, "html") == "# Logs\n\nThe log is an ordered sequence of records."


def test_a_page_without_boilerplate_loses_nothing():
    html = "<h1>Plain</h1><p>One.</p><ul><li>two</li></ul><p>Three <a href='x'>link</a>.</p>"

    assert clean(html, "html") == "# Plain\n\nOne.\n\ntwo\n\nThree link."


def test_a_page_wrapped_in_a_contents_div_is_read_whole():
    assert clean('<div id="contents"><p>All of the page.</p></div>', "html") == "All of the page."


def test_admonition_titles_label_their_paragraph_instead_of_becoming_headings():
    html = (
        "<h2>Retention</h2><div class='admonition note'><p class='admonition-title'>Note</p>"
        "<p>Compaction keeps the latest record.</p></div>"
    )

    cleaned = clean_doc(html, "html")

    assert cleaned.text == "## Retention\n\nNote: Compaction keeps the latest record."
    assert [b.kind for b in cleaned.blocks] == ["heading", "text"]


def test_definition_lists_keep_term_and_description_apart():
    html = "<dl><dt>retention.ms</dt><dd>How long records are kept.</dd></dl>"

    assert clean(html, "html") == "retention.ms\n\nHow long records are kept."


# Code stays code.

PYTHON = 'def main():\n    if ready:\n        print("go")  # say it\n\n    return 0'


def test_pre_blocks_keep_line_breaks_and_indentation_exactly():
    cleaned = clean_doc(f"<p>Example:</p><pre>{PYTHON}\n</pre><p>After.</p>", "html")

    assert cleaned.text == f"Example:\n\n{PYTHON}\n\nAfter."
    assert [b.kind for b in cleaned.blocks] == ["text", "code", "text"]


def test_hash_lines_in_code_are_not_headings():
    md = "# Build\n\n```sh\n# install first\nmake install\n\n#ifdef DEBUG\n```\n"

    cleaned = clean_doc(md, "markdown")

    assert cleaned.text == "# Build\n\n# install first\nmake install\n\n#ifdef DEBUG"
    assert [b.kind for b in cleaned.blocks] == ["heading", "code"]


def test_fenced_yaml_keeps_its_indentation():
    md = "```yaml\nspec:\n  replicas: 2\n  template:\n    image: x\n```"

    assert clean(md, "markdown") == "spec:\n  replicas: 2\n  template:\n    image: x"


def test_tabs_in_code_are_kept():
    assert clean("<pre>\tindented\n\t\tmore</pre>", "html") == "\tindented\n\t\tmore"


# Markdown is parsed, not pattern-matched.


def test_a_hash_without_a_space_is_not_a_heading():
    cleaned = clean_doc("#hashtag and #42 are words\n\n# Real heading", "markdown")

    assert [b.kind for b in cleaned.blocks] == ["text", "heading"]


def test_front_matter_is_metadata_not_text():
    md = "---\ntitle: Retention\ntags: [kafka, logs]\ndate: 2026-01-02\n---\n# Retention\n\nBody."

    cleaned = clean_doc(md, "markdown")

    assert cleaned.text == "# Retention\n\nBody."
    assert cleaned.metadata == {
        "title": "Retention",
        "tags": ["kafka", "logs"],
        "date": "2026-01-02",
    }


def test_a_thematic_break_is_not_front_matter():
    assert clean("Intro.\n\n---\n\nMore.", "markdown") == "Intro.\n\nMore."


def test_invalid_front_matter_is_a_bad_record():
    with pytest.raises(BadRecord, match="front matter"):
        clean("---\nkey: [unclosed\n---\nBody.", "markdown")


def test_a_link_in_a_heading_is_the_headings_text_but_its_permalink_is_not():
    html = (
        '<h2><a class="toc-backref" href="#id1">Can I use C?</a>'
        '<a class="headerlink" href="#c">¶</a></h2><p>Yes.</p>'
    )

    assert clean(html, "html") == "## Can I use C?\n\nYes."
