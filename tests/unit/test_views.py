"""Every string that reaches HTML is escaped."""

from rlhf_lens.views import render


def test_model_text_is_escaped():
    html = render("<p>{{ completion }}</p>", completion='<script>alert("x")</script>')
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_figures_are_embedded_as_png_data_uris():
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlhf_lens.views import figure_data_uri

    figure, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    uri = figure_data_uri(figure)
    plt.close(figure)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_helpers_that_embed_html_escape_a_plain_string():
    from rlhf_lens.views import details, render, with_stylesheet

    hostile = "<img src=x onerror=alert(1)>"
    for html in (details(hostile, hostile), with_stylesheet(hostile)):
        assert hostile not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>ok</b>" in details("s", render("<b>{{ t }}</b>", t="ok"))  # markup from a template stays markup
