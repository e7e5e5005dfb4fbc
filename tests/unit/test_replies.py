from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from arproxy import replies
from arproxy.replies import Reply
from arproxy.smtpd import with_enhanced_code as _with_enhanced_code


def test_downstream_multiline_reply_keeps_enhanced_code_on_every_line() -> None:
    reply = Reply.from_downstream(550, "5.1.1 No such user\n5.1.1 Try another")
    assert reply == Reply(550, "5.1.1", ("No such user", "Try another"))
    assert str(reply) == "550-5.1.1 No such user\r\n550 5.1.1 Try another"


def test_downstream_reply_without_enhanced_code() -> None:
    reply = Reply.from_downstream(250, "Ok")
    assert str(reply) == "250 Ok"


def test_mismatched_enhanced_class_is_dropped() -> None:
    assert Reply.from_downstream(250, "5.0.0 odd").enhanced is None


def test_control_characters_cannot_inject_reply_lines() -> None:
    reply = Reply.from_downstream(451, "4.0.0 a\rb\x00c")
    assert "\r" not in str(reply).replace("\r\n", "")
    assert str(reply) == "451 4.0.0 a b c"


def test_aiosmtpd_replies_get_enhanced_codes() -> None:
    assert (
        _with_enhanced_code("503 Error: need MAIL command") == "503 5.5.1 Error: need MAIL command"
    )
    assert _with_enhanced_code("250 2.1.5 Recipient OK") == "250 2.1.5 Recipient OK"
    assert _with_enhanced_code("354 End data with <CR><LF>.<CR><LF>") == (
        "354 End data with <CR><LF>.<CR><LF>"
    )
    assert _with_enhanced_code("552 Error: Too much mail data") == (
        "552 5.3.4 Error: Too much mail data"
    )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
            st.sampled_from(["\r", "\n", "\x00", "\x1f", "\x7f", "\t", " ", "é", "\u00a0"]),
        ),
        max_size=8,
    ).map("".join)
)
def test_clean_fast_path_gives_what_the_regex_gives(text: str) -> None:
    """Plain printable ASCII skips the regex; every text comes out as the regex's."""
    assert replies._clean(text) == replies._UNSAFE.sub(" ", text).strip()


def test_wire_form_made_once_leaves_equality_and_hash_alone() -> None:
    fresh = Reply.of(250, "2.1.0", "Sender OK")
    written = str(replies.SENDER_OK)
    assert str(replies.SENDER_OK) is written, "made once per reply"
    assert written == str(fresh) == "250 2.1.0 Sender OK"
    assert fresh == replies.SENDER_OK and hash(fresh) == hash(replies.SENDER_OK)
    assert repr(fresh) == repr(replies.SENDER_OK)
