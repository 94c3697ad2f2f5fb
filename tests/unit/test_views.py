"""Every string that reaches HTML is escaped."""

from rlhf_lens.views import render


def test_model_text_is_escaped():
    html = render("<p>{{ completion }}</p>", completion='<script>alert("x")</script>')
    assert "<script>" not in html and "&lt;script&gt;" in html
