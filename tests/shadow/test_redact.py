"""Redaction of API keys in error texts: every form a provider may echo back (issue 13)."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from shadow.client import MIN_SECRET_PREFIX, redact

KEY = "sk-test/AbC+dEf=ghIJ/klMNopQRstuVWxyz0123"


def forms(key: str) -> list[str]:
    quoted = urllib.parse.quote(key, safe="")
    return [key, key.replace("/", "\\/"), quoted, quoted.replace("%2F", "%2f"),
            urllib.parse.quote_plus(key, safe=""), key[:24], key[:MIN_SECRET_PREFIX]]


def test_every_form_is_redacted() -> None:
    for form in forms(KEY):
        text = f'HTTP 401: {{"error": "bad key {form}", "at": "edge"}}'
        out = redact(text, [KEY])
        assert out == 'HTTP 401: {"error": "bad key ***", "at": "edge"}', form


def test_text_without_the_key_is_left_alone() -> None:
    text = "HTTP 500: upstream sk-tes failed (sk-test is a model name here)"
    assert redact(text, [KEY]) == text
    assert redact(text, []) == text


def test_several_keys_and_occurrences() -> None:
    other = "another-secret-value-42"
    text = f"{KEY} / {other} / {urllib.parse.quote(KEY, safe='')} / {other[:10]}"
    assert redact(text, [KEY, other]) == "*** / *** / *** / ***"


@given(prefix=st.text(alphabet=" :,{}()", max_size=20),
       suffix=st.text(alphabet=" :,{}()", max_size=20),
       key=st.text(alphabet="abcXYZ0189/+=-_.~é ", min_size=MIN_SECRET_PREFIX, max_size=60),
       form=st.integers(0, 4), cut=st.integers(MIN_SECRET_PREFIX, 200))
def test_no_form_survives(prefix: str, suffix: str, key: str, form: int, cut: int) -> None:
    # Any form, whole or cut after at least MIN_SECRET_PREFIX characters of the key.
    f = forms(key)[form]
    f = f[:max(cut, len(forms(key)[0][:MIN_SECRET_PREFIX].encode()) * 3)]
    out = redact(prefix + f + suffix, [key])
    assert f not in out and "***" in out
    assert out.startswith(prefix) and out.endswith(suffix)
