"""DMARC's From reader: the plain-mailbox fast path gives the general reader's domains.

The fast path (``plain_mailbox_domain``) takes only one mailbox of RFC 5322 section 3.4's
plain shapes (``addr-spec``, ``[display-name] "<" addr-spec ">"``: atoms and quoted-strings,
white space as the only CFWS, section 3.2.3-3.2.5 and 3.4.1); on every value it takes, the
general reader (``email.headerregistry`` checked against ``email.utils``) must find the same
single domain. Comments, groups, several mailboxes, encoded-words (RFC 2047), obsolete
syntax (RFC 5322 section 4) and non-ASCII text must be left to the general reader.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from arproxy.checks.dmarc import author_domains
from arproxy.checks.dmarc.author import parsed_mailbox_domains, plain_mailbox_domain

# RFC 5322 section 3.2.3 atext; section 3.2.4 qtext.
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
QTEXT = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))
WSP = st.sampled_from([" ", "\t", "  ", ""])

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=4).map(".".join)
addr_specs = st.builds(lambda local, domain: f"{local}@{domain}", dot_atoms, dot_atoms)
quoted = st.text(QTEXT + " \t", max_size=10).map(lambda text: f'"{text}"')
words = st.one_of(atoms, quoted)
display_names = st.lists(words, min_size=1, max_size=4).map(" ".join)
mailboxes = st.one_of(
    addr_specs,
    st.builds(lambda name, ws, addr: f"{name}{ws}<{addr}>", display_names, WSP, addr_specs),
    addr_specs.map(lambda addr: f"<{addr}>"),
)
# Field values as the unfolded From field gives them: usually " " after the colon.
plain_values = st.builds(lambda a, m, b: f"{a}{m}{b}", WSP, mailboxes, WSP)
# Anything near the plain shapes, to find values the matcher takes by mistake.
near_values = st.text(ATEXT + QTEXT + ' \t"<>@.,;:()[]\\', max_size=40)


def assert_same_as_general(value: str) -> None:
    plain = plain_mailbox_domain(value)
    if plain is None:
        return
    assert parsed_mailbox_domains(value) == [plain]


@given(plain_values)
@example(' "Alice Smith" <alice@example.test>')
@example("alice@example.test")
@example(' "" <alice@example.test>')
def test_plain_shapes_take_the_fast_path_and_agree(value: str) -> None:
    # Every value built from the plain grammar is taken, and has the general domain.
    if "=?" in value:
        assert plain_mailbox_domain(value) is None  # a possible encoded-word: general path
        return
    assert plain_mailbox_domain(value) is not None
    assert_same_as_general(value)


@given(near_values)
def test_whatever_the_fast_path_takes_the_general_reader_reads_alike(value: str) -> None:
    assert_same_as_general(value)


@pytest.mark.parametrize(
    "value",
    [
        " alice@example.test (Alice)",  # comment (RFC 5322 section 3.2.2)
        " (c) alice@example.test",
        " Alice (x) <alice@example.test>",
        " team: alice@example.test;",  # group (section 3.4)
        " alice@example.test, bob@example.test",  # several mailboxes (mailbox-list)
        " =?utf-8?q?Alice?= <alice@example.test>",  # encoded-word (RFC 2047)
        " =?utf-8?q?a=40evil.test?= <alice@example.test>",
        " Dr. Alice <alice@example.test>",  # obs-phrase (section 4.1)
        " <@route.test:alice@example.test>",  # obs-route (section 4.4)
        " alice @ example.test",  # obs-local-part / obs-domain CFWS (section 4.4)
        ' "quoted local"@example.test',  # quoted local-part: general reader
        " alice@[192.0.2.1]",  # domain-literal
        " J\u00fcrgen <j@b\u00fccher.test>",  # non-ASCII (RFC 6532)
        " alice@example.test>",
        " <alice@example.test",
        ' "Alice <alice@example.test>',
        " alice.@example.test",
    ],
)
def test_other_syntax_takes_the_general_path(value: str) -> None:
    assert plain_mailbox_domain(value) is None


@pytest.mark.parametrize(
    ("raw", "domains"),
    [
        (b"From: Alice <alice@Example.TEST>\r\n\r\n", ("example.test",)),
        (b'From: "Smith, Alice" <alice@example.test>\r\n\r\n', ("example.test",)),
        (b"From: alice@example.test\r\n\r\n", ("example.test",)),
        (b"From: Alice\r\n <alice@example.test>\r\n\r\n", ("example.test",)),  # folded
    ],
)
def test_author_domains_through_the_fast_path(raw: bytes, domains: tuple[str, ...]) -> None:
    # The result as before (RFC 7489 section 6.6.1: the domain of the one From mailbox,
    # lower-cased): the fast path changes no answer.
    assert author_domains(raw) == domains
