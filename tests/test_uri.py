"""Tests for mtqpgw.uri: the mtqp URI of RFC 3887 section 9."""

from __future__ import annotations

import base64
import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.uri import DEFAULT_PORT, MTQPURI, URIError, check_host
from mtqpgw.wire import Track

# "abcdefgh\n": the seed's example secret (seed-defects.md, section 4.1).
SECRET = "YWJjZGVmZ2gK"
ENVID = "12345-20010101@example.com"


class ParseTests(SynchronousTestCase):
    def test_seed_form(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://mtqp.example.com/track/{ENVID}/{SECRET}")
        self.assertEqual(uri, MTQPURI("mtqp.example.com", None, ENVID, SECRET))
        self.assertEqual(uri.effective_port, DEFAULT_PORT)
        self.assertEqual(DEFAULT_PORT, 1038)

    def test_seed_form_with_port(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://mtqp.example.com:10380/track/{ENVID}/{SECRET}")
        self.assertEqual(uri.port, 10380)
        self.assertEqual(uri.effective_port, 10380)

    def test_escaped_slash_in_envid(self) -> None:
        # Section 9.4: "/" in the envid must be written %2F.
        uri = MTQPURI.from_text(f"mtqp://example.com/track/12345%2F20010101@example.com/{SECRET}")
        self.assertEqual(uri.envid, "12345/20010101@example.com")
        self.assertEqual(
            uri.to_text(), f"mtqp://example.com/track/12345%2F20010101@example.com/{SECRET}"
        )

    def test_escaped_slash_in_secret(self) -> None:
        secret = base64.b64encode(b"\xff\xff\xff").decode()  # "////"
        uri = MTQPURI.from_text("mtqp://example.com/track/e/%2F%2f%2F%2F")
        self.assertEqual(uri.secret, secret)
        self.assertEqual(uri.to_text(), "mtqp://example.com/track/e/%2F%2F%2F%2F")

    def test_any_escape_is_decoded(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://example.com/track/%61%3Fb%25c%23d/{SECRET}")
        self.assertEqual(uri.envid, "a?b%c#d")
        self.assertEqual(uri.to_text(), f"mtqp://example.com/track/a%3Fb%25c%23d/{SECRET}")

    def test_escape_is_decoded_once(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://example.com/track/a%2541/{SECRET}")
        self.assertEqual(uri.envid, "a%41")

    def test_case(self) -> None:
        # Scheme, host and "/track/" are case-insensitive; envid and secret are not.
        uri = MTQPURI.from_text(f"MTQP://Mail.Example.COM/TrAcK/AbC@Example.com/{SECRET}")
        self.assertEqual(uri.host, "mail.example.com")
        self.assertEqual(uri.envid, "AbC@Example.com")
        self.assertEqual(uri.to_text(), f"mtqp://mail.example.com/track/AbC@Example.com/{SECRET}")

    def test_angle_brackets_dropped(self) -> None:
        # seed-defects.md: envids arrive with or without angle brackets.
        for written in (f"<{ENVID}>", f"%3C{ENVID}%3E", f"%3c{ENVID}>"):
            uri = MTQPURI.from_text(f"mtqp://example.com/track/{written}/{SECRET}")
            self.assertEqual(uri.envid, ENVID, written)
        self.assertEqual(MTQPURI("example.com", None, "<x>", SECRET).envid, "x")

    def test_ipv4(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://192.0.2.1:1038/track/e/{SECRET}")
        self.assertEqual((uri.host, uri.port), ("192.0.2.1", 1038))
        self.assertEqual(uri.to_text(), f"mtqp://192.0.2.1:1038/track/e/{SECRET}")

    def test_ipv6(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://[2001:DB8:0::1]:1039/track/e/{SECRET}")
        self.assertEqual((uri.host, uri.port), ("2001:db8::1", 1039))
        self.assertEqual(uri.authority, "[2001:db8::1]:1039")
        self.assertEqual(uri.to_text(), f"mtqp://[2001:db8::1]:1039/track/e/{SECRET}")
        self.assertEqual(MTQPURI.from_text(f"mtqp://[::1]/track/e/{SECRET}").host, "::1")

    def test_trailing_slash_tolerated(self) -> None:
        uri = MTQPURI.from_text(f"mtqp://example.com/track/e/{SECRET}/")
        self.assertEqual(uri.secret, SECRET)

    def test_surrounding_whitespace(self) -> None:
        uri = MTQPURI.from_text(f"  mtqp://example.com/track/e/{SECRET}\n")
        self.assertEqual(uri.envid, "e")

    def test_replace_validates(self) -> None:
        uri = MTQPURI("example.com", None, "e", SECRET)
        self.assertEqual(dataclasses.replace(uri, port=2).effective_port, 2)
        self.assertRaises(URIError, dataclasses.replace, uri, port=0)

    def test_repr_hides_secret(self) -> None:
        uri = MTQPURI("example.com", None, "e", SECRET)
        self.assertNotIn(SECRET, repr(uri))
        self.assertNotIn(SECRET, str(uri))

    def test_uri_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(URIError, ValueError))


# (text, a fragment of the expected message)
BAD = [
    (f"http://example.com/track/e/{SECRET}", "must start with mtqp://"),
    (f"mtqp:example.com/track/e/{SECRET}", "must start with mtqp://"),
    ("", "must start with mtqp://"),
    (f"mtqp://user@example.com/track/e/{SECRET}", "user information"),
    (f"mtqp://example.com/track/e/{SECRET}?x=1", "no query"),
    (f"mtqp://example.com/track/e/{SECRET}#top", "no fragment"),
    (f"mtqp://example.com/track/e#1/{SECRET}", "no fragment"),
    (f"mtqp:///track/e/{SECRET}", "names no host"),
    (f"mtqp://:1038/track/e/{SECRET}", "names no host"),
    (f"mtqp://example.com:/track/e/{SECRET}", "port after ':' is empty"),
    (f"mtqp://example.com:0/track/e/{SECRET}", "between 1 and 65535, got 0"),
    (f"mtqp://example.com:65536/track/e/{SECRET}", "between 1 and 65535, got 65536"),
    (f"mtqp://example.com:123456/track/e/{SECRET}", "between 1 and 65535"),
    (f"mtqp://example.com:1_0/track/e/{SECRET}", "between 1 and 65535"),
    (f"mtqp://example.com:\u0661/track/e/{SECRET}", "between 1 and 65535"),
    (f"mtqp://::1/track/e/{SECRET}", "must be written in brackets"),
    (f"mtqp://[::1/track/e/{SECRET}", "closing ']'"),
    (f"mtqp://[::1]x/track/e/{SECRET}", "after the IPv6 literal"),
    (f"mtqp://[192.0.2.1]/track/e/{SECRET}", "only IPv6 addresses go in brackets"),
    (f"mtqp://[v1.x]/track/e/{SECRET}", "IPvFuture"),
    (f"mtqp://[fe80::1%25eth0]/track/e/{SECRET}", "zone identifiers"),
    (f"mtqp://[::g]/track/e/{SECRET}", "not a valid IPv6 address"),
    (f"mtqp://256.0.0.1/track/e/{SECRET}", "not a valid IPv4 address"),
    (f"mtqp://example.123/track/e/{SECRET}", "not a valid IPv4 address"),
    (f"mtqp://ex%41mple.com/track/e/{SECRET}", "not a valid host name"),
    (f"mtqp://-bad.example/track/e/{SECRET}", "not a valid host name"),
    (f"mtqp://a..example/track/e/{SECRET}", "not a valid host name"),
    (f"mtqp://caf\u00e9.example/track/e/{SECRET}", "not a valid host name"),
    (f"mtqp://{'a' * 64}.example/track/e/{SECRET}", "not a valid host name"),
    ("mtqp://example.com", "the path must be /track/<envid>/<secret>"),
    (f"mtqp://example.com/trace/e/{SECRET}", "the path must be /track/<envid>/<secret>"),
    (f"mtqp://example.com/track/e/{SECRET}//", "written %2F"),
    (f"mtqp://example.com/track/a/b/{SECRET}", "written %2F"),
    ("mtqp://example.com/track/e", "written %2F"),
    (f"mtqp://example.com/track//{SECRET}", "the envelope id is empty"),
    (f"mtqp://example.com/track/<>/{SECRET}", "the envelope id is empty"),
    (f"mtqp://example.com/track/<<e>>/{SECRET}", "more than one pair of angle brackets"),
    (f"mtqp://example.com/track/%3Ce/{SECRET}", "unbalanced angle brackets"),
    (f"mtqp://example.com/track/e>/{SECRET}", "unbalanced angle brackets"),
    (f"mtqp://example.com/track/<<e>/{SECRET}", "unbalanced angle brackets"),
    (f"mtqp://example.com/track/a%20b/{SECRET}", "printable US-ASCII without spaces"),
    (f"mtqp://example.com/track/a%00b/{SECRET}", "printable US-ASCII without spaces"),
    (f"mtqp://example.com/track/caf%C3%A9/{SECRET}", "printable US-ASCII without spaces"),
    (f"mtqp://example.com/track/a%FFb/{SECRET}", "not valid UTF-8"),
    (f"mtqp://example.com/track/50%/{SECRET}", "does not start a %XX escape"),
    (f"mtqp://example.com/track/50%zz/{SECRET}", "does not start a %XX escape"),
    ("mtqp://example.com/track/e/", "the secret is empty"),
    ("mtqp://example.com/track/e/YWJjZGVmZ2g", "not strict base64"),
    ("mtqp://example.com/track/e/YWJj%0A", "not strict base64"),
    ("mtqp://example.com/track/e/not-base64!", "not strict base64"),
    ("mtqp://example.com/track/e/\ud800", "not valid text"),
]


class ErrorTests(SynchronousTestCase):
    def test_bad_uris(self) -> None:
        for text, message in BAD:
            with self.subTest(text=text):
                with self.assertRaises(URIError) as caught:
                    MTQPURI.from_text(text)
                self.assertIn(message, str(caught.exception))

    def test_secret_never_in_message(self) -> None:
        secret = "c2VjcmV0"  # valid base64; the host is what is wrong
        with self.assertRaises(URIError) as caught:
            MTQPURI.from_text(f"mtqp://-x/track/e/{secret}x")
        self.assertNotIn(secret, str(caught.exception))
        with self.assertRaises(URIError) as caught:
            MTQPURI.from_text(f"mtqp://x/track/e/{secret}x")
        self.assertNotIn(secret, str(caught.exception))

    def test_not_text(self) -> None:
        self.assertRaises(URIError, MTQPURI.from_text, b"mtqp://x/track/e/YWJj")

    def test_constructor_validates(self) -> None:
        for args in [
            ("", None, "e", SECRET),
            ("x", True, "e", SECRET),
            ("x", 1.5, "e", SECRET),
            ("x", 70000, "e", SECRET),
            ("x", None, "", SECRET),
            ("x", None, "a b", SECRET),
            ("x", None, 3, SECRET),
            ("x", None, "e", "YWJ"),
            ("x", None, "e", b"YWJj"),
            (None, None, "e", SECRET),
        ]:
            with self.subTest(args=args):
                self.assertRaises(URIError, MTQPURI, *args)


class CheckHostTests(SynchronousTestCase):
    def test_normalised(self) -> None:
        self.assertEqual(check_host("Mail.Example.COM."), "mail.example.com")
        self.assertEqual(check_host("0:0::1"), "::1")
        self.assertEqual(check_host("10.0.0.5"), "10.0.0.5")
        self.assertEqual(check_host("_mtqp._tcp.example.com"), "_mtqp._tcp.example.com")
        self.assertEqual(check_host("localhost"), "localhost")
        self.assertEqual(check_host("123.example"), "123.example")

    def test_invalid(self) -> None:
        for host in ["", ".", "a b", "a/b", "01.2.3.4", "-a", "a-", "fe80::1%eth0", "x" * 254]:
            with self.subTest(host=host):
                self.assertRaises(URIError, check_host, host)


_LABELS = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_NAMES = (
    st.lists(_LABELS, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not name.rsplit(".", 1)[-1].isdigit())
)
_HOSTS = st.one_of(_NAMES, st.ip_addresses().map(str))
_PORTS = st.one_of(st.none(), st.integers(1, 65535))


def _trackable(envid: str) -> bool:
    """Whether a TRACK line can carry *envid* (wire.Track's rule on angle brackets)."""
    try:
        Track(envid, SECRET)
    except ValueError:
        return False
    return True


_ENVIDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1).filter(
    _trackable
)
_SECRETS = st.binary(min_size=1, max_size=48).map(lambda b: base64.b64encode(b).decode())
_VALUES = st.builds(MTQPURI, _HOSTS, _PORTS, _ENVIDS, _SECRETS)

# Text near the grammar, so the fuzzer reaches past the scheme check.
_PIECES = st.sampled_from(
    [
        "mtqp://",
        "MTQP://",
        "/",
        "/track/",
        "[",
        "]",
        ":",
        "@",
        "%",
        "%2F",
        "%3c",
        "<",
        ">",
        "?",
        "#",
        "::1",
        "example.com",
        "1038",
        "YWJj",
        "=",
        " ",
        "\u00e9",
        "\ud800",
        "%FF",
    ]
)
_NEAR = st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=12).map("".join)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(), _NEAR, _NEAR.map(lambda t: "mtqp://" + t)))
    def test_only_uri_error(self, text: str) -> None:
        try:
            uri = MTQPURI.from_text(text)
        except URIError:
            return
        # Whatever parses renders to a URI that parses back to the same value.
        self.assertEqual(MTQPURI.from_text(uri.to_text()), uri)
        # And a TRACK line can carry its envid and secret.
        Track(uri.envid, uri.secret)

    @settings(max_examples=200, deadline=None)
    @given(_VALUES)
    def test_value_text_value(self, uri: MTQPURI) -> None:
        text = uri.to_text()
        self.assertEqual(MTQPURI.from_text(text), uri)
        # RFC 3887 9.4's octets, and those that would end or break a URI, never appear raw.
        path = text.split("/track/", 1)[1]
        envid_text, secret_text = path.split("/")
        for raw in (envid_text, secret_text):
            for c in "/?# ":
                self.assertNotIn(c, raw)
            self.assertTrue(raw.isascii() and raw.isprintable())

    @settings(max_examples=100, deadline=None)
    @given(_HOSTS, _PORTS, _ENVIDS, _SECRETS)
    def test_section_9_form(self, host: str, port: int | None, envid: str, secret: str) -> None:
        # Written the way section 9 shows it, escaping only what 9.4 requires.
        def escape(s: str) -> str:
            return (
                s.replace("%", "%25").replace("/", "%2F").replace("?", "%3F").replace("#", "%23")
            )

        authority = f"[{host}]" if ":" in host else host
        if port is not None:
            authority += f":{port}"
        uri = MTQPURI.from_text(f"mtqp://{authority}/track/{escape(envid)}/{escape(secret)}")
        self.assertEqual(uri, MTQPURI(host, port, envid, secret))
