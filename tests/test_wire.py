# -*- test-case-name: tests.test_wire -*-
"""Tests for mtqpgw.wire: command lines, status lines and dot-stuffed responses."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.wire import (
    MAX_LINE,
    QUIT_LINE,
    CommandError,
    Comment,
    Indicator,
    Quit,
    Response,
    ResponseError,
    ResponseParser,
    StartTLS,
    Track,
    can_name_for_starttls,
    comment_line,
    greeting,
    parse_command,
    parse_options,
    parse_status_line,
    starttls_line,
    starttls_offered,
    starttls_required,
    track_line,
)
from tests import seed

FAST = settings(max_examples=200, deadline=None)


def server_lines(transcript: str) -> list[bytes]:
    """The server lines of a seed transcript, without their "S:" prefix and CRLF."""
    lines = []
    for line in transcript.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("S:"):
            raise ValueError(f"not a server line: {line!r}")
        lines.append(line[3:].encode("ascii"))
    return lines


def feed_all(parser: ResponseParser, lines: list[bytes]) -> list[Response]:
    """Feed every line; the responses completed, in order."""
    done = []
    for line in lines:
        response = parser.feed(line)
        if response is not None:
            done.append(response)
    return done


def wire_lines(data: bytes) -> list[bytes]:
    """Split octets that must end with CRLF into lines, as a LineReceiver would."""
    assert data.endswith(b"\r\n"), data
    return data[:-2].split(b"\r\n")


# Seed example #8 as the wire carries it, from tests/seed.py (corrections
# named there: the close delimiter, the type parameter); its
# "..Dot-Stuffed-Header" line is dot-stuffed on the wire.
EXAMPLE_8_LINES = wire_lines(seed.EXAMPLES[8].response_bytes())


# Seed examples #13 and #14 (RFC 3887 section 8.1).  Seed artefact, not yet
# in seed-defects.md: the extraction wrapped "go here ..." onto a line of its
# own without "S:"; in the RFC it is the end of the "... tracking details"
# line, which is how it is written here.
EXAMPLE_13_ANSWER_1 = """
S: +OK+ Tracking information follows
S:
S: ... tracking details #1 go here ...
S: .
"""
EXAMPLE_13_ANSWER_2 = """
S: +OK+ Tracking information follows
S:
S: ... tracking details #2 go here ...
S: .
"""


class SeedExampleTests(SynchronousTestCase):
    """The examples of the seed, read with the codec."""

    def test_example_1_no_options(self) -> None:
        [r] = feed_all(ResponseParser(), server_lines("S: +OK/MTQP MTQP server ready"))
        self.assertEqual(r, Response(Indicator.OK, ("mtqp",), "MTQP server ready"))
        self.assertTrue(r.is_positive)
        self.assertTrue(r.has_reason("MTQP"))
        self.assertIsNone(r.lines)

    def test_example_2_temporarily_unavailable(self) -> None:
        [r] = feed_all(
            ResponseParser(),
            server_lines("S: -TEMP/MTQP/admin Service down for admin, call back later"),
        )
        self.assertIs(r.indicator, Indicator.TEMP)
        self.assertEqual(r.reasons, ("mtqp", "admin"))
        self.assertEqual(r.text, "Service down for admin, call back later")
        self.assertFalse(r.is_positive)

    def test_example_3_permanently_unavailable(self) -> None:
        [r] = feed_all(ResponseParser(), server_lines("S: -ERR/MTQP/unavailable Service down"))
        self.assertEqual(r, Response(Indicator.ERR, ("mtqp", "unavailable"), "Service down"))

    def test_example_4_empty_option_list(self) -> None:
        parser = ResponseParser()
        lines = server_lines("S: +OK+/MTQP MTQP server ready\nS: .")
        self.assertIsNone(parser.feed(lines[0]))
        self.assertTrue(parser.in_progress)
        r = parser.feed(lines[1])
        self.assertEqual(r, Response(Indicator.OK_MULTI, ("mtqp",), "MTQP server ready", ()))
        self.assertFalse(parser.in_progress)
        self.assertEqual(parse_options(r.lines), {})

    def test_example_5_options(self) -> None:
        # Seed artefact, not yet in seed-defects.md: the extraction lost the
        # leading white space of the continuation line "list of parameters"
        # (RFC 3887 section 3 says continuation lines start with white
        # space); it is restored here.
        transcript = """
            S: +OK+/MTQP MTQP server ready
            S: starttls
            S: vnd.com.example.option2 with parameters private to example.com
            S: vnd.com.example.option3 with a very long
            S:    list of parameters
            S: .
        """
        [r] = feed_all(ResponseParser(), server_lines(transcript))
        self.assertIs(r.indicator, Indicator.OK_MULTI)
        self.assertEqual(r.reasons, ("mtqp",))
        self.assertEqual(len(r.lines), 4)
        options = parse_options(r.lines)
        self.assertEqual(
            options,
            {
                "starttls": "",
                "vnd.com.example.option2": "with parameters private to example.com",
                "vnd.com.example.option3": "with a very long list of parameters",
            },
        )
        self.assertTrue(starttls_offered(options))
        self.assertFalse(starttls_required(options))

    def test_track_lines_of_examples_6_to_12(self) -> None:
        # Seed defect (spec/seed-defects.md, "TRACK lines"): the TRACK lines
        # wrap the envelope id in angle brackets that the reports leave out;
        # the Track value keeps it without them.  The secret is kept as the
        # base64 text sent (it decodes to "abcdefgh\n", not the seed's
        # "abcdefgh": the hash is the certifier's business, not the wire's).
        for example in range(6, 13):
            line = b"TRACK <12345-20010101@example.com> YWJjZGVmZ2gK"
            command = parse_command(line)
            self.assertEqual(command, Track(seed.ENVID, seed.SECRET_B64), f"example #{example}")
            self.assertEqual(command.envid, "12345-20010101@example.com")
            self.assertEqual(command.secret, "YWJjZGVmZ2gK")
            self.assertEqual(command.to_bytes(), line + b"\r\n")

    def test_example_8_dot_stuffed_line(self) -> None:
        # Seed defect (spec/seed-defects.md, "Example #8"): the
        # "..Dot-Stuffed-Header" line shows stuffing on the wire; the client
        # strips one dot and the line is not a tracking field.
        lines = EXAMPLE_8_LINES
        [r] = feed_all(ResponseParser(), lines)
        self.assertEqual(r.text, "Tracking information follows")
        self.assertEqual(r.lines[1], b".Dot-Stuffed-Header: as an example")
        self.assertEqual(r.lines[2], b"")
        self.assertEqual(r.lines[-1], b"--%%%%--")
        self.assertEqual(len(r.lines), len(lines) - 2)
        self.assertEqual(r.to_bytes(), b"".join(line + b"\r\n" for line in lines))

    def test_example_13_one_at_a_time(self) -> None:
        self.assertEqual(parse_command(b"TRACK <tracking-id> YWJjZGVmZ2gK").envid, "tracking-id")
        parser = ResponseParser()
        [first] = feed_all(parser, server_lines(EXAMPLE_13_ANSWER_1))
        self.assertEqual(
            parse_command(b"TRACK <tracking-id-2> QUJDREVGR0gK"),
            Track("tracking-id-2", "QUJDREVGR0gK"),
        )
        [second] = feed_all(parser, server_lines(EXAMPLE_13_ANSWER_2))
        # The RFC's placeholder line begins with "." on the wire, so by the
        # rule of RFC 3887 2.3 the client strips one of its dots.
        self.assertEqual(first.lines, (b"", b".. tracking details #1 go here ..."))
        self.assertEqual(second.lines, (b"", b".. tracking details #2 go here ..."))

    def test_example_14_pipelined(self) -> None:
        commands = [
            parse_command(line)
            for line in wire_lines(
                b"TRACK <tracking-id> YWJjZGVmZ2gK\r\nTRACK <tracking-id-2> QUJDREVGR0gK\r\n"
            )
        ]
        self.assertEqual(
            commands,
            [Track("tracking-id", "YWJjZGVmZ2gK"), Track("tracking-id-2", "QUJDREVGR0gK")],
        )
        answers = feed_all(
            ResponseParser(),
            server_lines(EXAMPLE_13_ANSWER_1 + EXAMPLE_13_ANSWER_2),
        )
        self.assertEqual(len(answers), 2)
        self.assertEqual(answers[0].lines[1], b".. tracking details #1 go here ...")
        self.assertEqual(answers[1].lines[1], b".. tracking details #2 go here ...")

    def test_greeting_then_answers_through_one_parser(self) -> None:
        parser = ResponseParser()
        stream = greeting("example2.com", ["STARTTLS"]).to_bytes()
        stream += Response(Indicator.ERR, ("noinfo",), "No information").to_bytes()
        stream += b"".join(line + b"\r\n" for line in EXAMPLE_8_LINES)
        got = feed_all(parser, wire_lines(stream))
        self.assertEqual(
            [r.indicator for r in got], [Indicator.OK_MULTI, Indicator.ERR, Indicator.OK_MULTI]
        )
        self.assertEqual(got[0].lines, (b"STARTTLS",))


def bad(reason: str, text: str) -> bytes:
    return f"-BAD/{reason} {text}\r\n".encode("ascii")


SYNTAX_ERRORS = {
    b"": "Empty command line",
    b" \t ": "Empty command line",
    b" QUIT": "Command line starts with white space",
    b"\tQUIT": "Command line starts with white space",
    b"QUIT x": "QUIT takes no parameters",
    b"QUIT\tx ": "QUIT takes no parameters",
    b"TRACK": "TRACK takes an envelope id and a secret",
    b"TRACK <a@b>": "TRACK takes an envelope id and a secret",
    b"TRACK <a@b> YWJj YWJj": "TRACK takes an envelope id and a secret",
    b"TRACK <> YWJj": "The envelope id is empty",
    b"TRACK <abc YWJj": "The envelope id has unbalanced angle brackets",
    b"TRACK abc> YWJj": "The envelope id has unbalanced angle brackets",
    b"TRACK <<abc>> YWJj": "The envelope id has unbalanced angle brackets",
    b"TRACK < YWJj": "The envelope id has unbalanced angle brackets",
    b"TRACK <a@b> YWJjZA": "The secret is not base64",
    b"TRACK <a@b> YWJjZA=": "The secret is not base64",
    b"TRACK <a@b> YW-jZA==": "The secret is not base64",
    b"TRACK <a@b> YWJjZGVmZ2gK=": "The secret is not base64",
    b"STARTTLS": "STARTTLS takes one domain name",
    b"STARTTLS a.example b.example": "STARTTLS takes one domain name",
    b"STARTTLS localhost": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS 192.0.2.1": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS -a.example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS a-.example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS a..example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS .example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS a.example..": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS a_b.example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS a.example:1038": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS " + b"a" * 64 + b".example": "STARTTLS needs a fully qualified domain name",
    b"STARTTLS " + b"a." * 126 + b"ab": "STARTTLS needs a fully qualified domain name",
}

NOT_PRINTABLE = "Command line holds an octet that is not printable ASCII"

# Every text a refusal may carry: fixed sentences, so that nothing from the
# line, and above all no secret, can be echoed.
ERROR_TEXTS = set(SYNTAX_ERRORS.values()) | {
    NOT_PRINTABLE,
    "Unknown command",
    "Command line longer than 998 octets",
}


class ParseCommandTests(SynchronousTestCase):
    def assertRefused(self, line: bytes, expected: bytes) -> None:
        with self.assertRaises(CommandError) as caught:
            parse_command(line)
        self.assertEqual(caught.exception.response.to_bytes(), expected, line)

    def test_syntax_errors(self) -> None:
        for line, text in SYNTAX_ERRORS.items():
            self.assertRefused(line, bad("syntax", text))

    def test_unknown_commands(self) -> None:
        for line in (b"HELO", b"COMMENTS", b"COMMENTS hi", b"TRACKX <a> YWJj", b"QUIT: x", b"."):
            self.assertRefused(line, b"-BAD/unknown-command Unknown command\r\n")

    def test_octets_that_are_not_printable_ascii(self) -> None:
        expected = bad("syntax", NOT_PRINTABLE)
        for line in (
            b"QUIT\x00",
            b"\x00",
            b"COMMENT caf\xc3\xa9",
            b"QUIT\x80",
            b"QUIT\r",
            b"QUIT\rQUIT",
            b"QUIT\nQUIT",
            b"COMMENT \x7f",
            b"COMMENT \x0b",
            b"COMMENT \x1b[2J",
            b"TRACK <a\x00b> YWJj",
        ):
            self.assertRefused(line, expected)

    def test_line_length(self) -> None:
        at_limit = b"COMMENT " + b"x" * (MAX_LINE - 8)
        self.assertEqual(len(at_limit), 998)
        self.assertEqual(parse_command(at_limit), Comment("x" * 990))
        too_long = at_limit + b"x"
        self.assertEqual(len(too_long), 999)
        expected = b"-BAD/line-too-long Command line longer than 998 octets\r\n"
        self.assertRefused(too_long, expected)
        # The length is judged before the content: a long line of garbage
        # is "too long", not "not printable".
        self.assertRefused(b"\x00" * 999, expected)

    def test_keywords_are_case_insensitive(self) -> None:
        for keyword in (b"TRACK", b"track", b"Track", b"tRaCk"):
            self.assertEqual(parse_command(keyword + b" <a@b> YWJj"), Track("a@b", "YWJj"))
        for keyword in (b"QUIT", b"quit", b"Quit"):
            self.assertEqual(parse_command(keyword), Quit())
        for keyword in (b"COMMENT", b"comment", b"CoMmEnT"):
            self.assertEqual(parse_command(keyword + b" hello"), Comment("hello"))
        for keyword in (b"STARTTLS", b"starttls", b"StartTLS"):
            self.assertEqual(parse_command(keyword + b" a.example"), StartTLS("a.example"))

    def test_parameters_are_case_sensitive(self) -> None:
        # Envelope ids and base64 are not case-insensitive (RFC 3887 9.3).
        self.assertEqual(parse_command(b"TRACK <AbC> YWJj").envid, "AbC")
        self.assertEqual(parse_command(b"TRACK <a> ywjj").secret, "ywjj")

    def test_tab_and_space_runs_separate(self) -> None:
        self.assertEqual(parse_command(b"TRACK\t<a@b>\t \tYWJj"), Track("a@b", "YWJj"))
        self.assertEqual(parse_command(b"STARTTLS\t\ta.example"), StartTLS("a.example"))
        self.assertEqual(parse_command(b"COMMENT\tsome\ttext"), Comment("some\ttext"))

    def test_trailing_white_space(self) -> None:
        # Seed defect (spec/seed-defects.md, last row): the ABNF has
        # "QUIT" CRLF, but trailing white space is accepted.
        self.assertEqual(parse_command(b"QUIT "), Quit())
        self.assertEqual(parse_command(b"QUIT\t \t"), Quit())
        self.assertEqual(parse_command(b"TRACK <a@b> YWJj \t"), Track("a@b", "YWJj"))
        self.assertEqual(parse_command(b"STARTTLS a.example\t"), StartTLS("a.example"))
        self.assertEqual(parse_command(b"COMMENT hi  "), Comment("hi"))
        self.assertEqual(parse_command(b"COMMENT "), Comment(""))

    def test_comment(self) -> None:
        self.assertEqual(parse_command(b"COMMENT"), Comment(""))
        self.assertEqual(parse_command(b"COMMENT  a  b "), Comment("a  b"))
        self.assertEqual(parse_command(b"COMMENT TRACK <a> YWJj"), Comment("TRACK <a> YWJj"))

    def test_envid_with_or_without_brackets(self) -> None:
        self.assertEqual(parse_command(b"TRACK a@b YWJj"), parse_command(b"TRACK <a@b> YWJj"))
        self.assertEqual(parse_command(b"TRACK <a>b> YWJj").envid, "a>b")
        self.assertEqual(parse_command(b"TRACK a<b>c YWJj").envid, "a<b>c")

    def test_secret_base64(self) -> None:
        for secret in (b"YWJjZA==", b"YWJjZGU=", b"YWJjZGVm", b"+/+/", seed.SECRET_B64.encode()):
            self.assertEqual(parse_command(b"TRACK <x> " + secret).secret, secret.decode())

    def test_starttls_domains(self) -> None:
        cases = {
            b"a.example": "a.example",
            b"MTQP.Example.COM": "mtqp.example.com",
            # Trailing root dot accepted and dropped (see _canonical_domain).
            b"mtqp.example.com.": "mtqp.example.com",
            b"xn--bcher-kva.example": "xn--bcher-kva.example",
            b"1.example": "1.example",
            b"a-b.c-d.example": "a-b.c-d.example",
            b"a" * 63 + b".example": "a" * 63 + ".example",
        }
        for domain, expected in cases.items():
            self.assertEqual(parse_command(b"STARTTLS " + domain), StartTLS(expected))
        longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
        self.assertEqual(len(longest), 253)
        self.assertEqual(parse_command(b"STARTTLS " + longest.encode()).domain, longest)
        self.assertEqual(parse_command(b"STARTTLS " + longest.encode() + b".").domain, longest)

    def test_error_never_echoes_the_secret(self) -> None:
        secret = b"c2VjcmV0LXNlY3JldA"  # not padded, so refused
        for line in (
            b"TRACK <a@b> " + secret,
            b"TRACK <> " + secret,
            b"TRACK <a@b> " + secret + b" extra",
            b"TRACK <a@b> " + secret + b"\x00",
        ):
            with self.assertRaises(CommandError) as caught:
                parse_command(line)
            self.assertNotIn(secret, caught.exception.response.to_bytes())
            self.assertNotIn(secret.decode(), str(caught.exception))

    def test_track_repr_hides_the_secret(self) -> None:
        track = parse_command(b"TRACK <a@b> " + seed.SECRET_B64.encode())
        self.assertNotIn(seed.SECRET_B64, repr(track))
        self.assertIn("a@b", repr(track))

    @FAST
    @given(st.binary(max_size=1100))
    def test_any_octets_give_a_command_or_a_refusal(self, line: bytes) -> None:
        self._command_or_refusal(line)

    @FAST
    @given(
        st.sampled_from([b"TRACK", b"track", b"QUIT", b"COMMENT", b"STARTTLS", b"FOO", b""]),
        st.lists(
            st.one_of(
                st.binary(max_size=12),
                st.text("<>@.-_aZ09+/=", max_size=12).map(str.encode),
                st.sampled_from([b"<a@b>", b"YWJjZGVmZ2gK", b"a.example", b"<>", b"=", b""]),
            ),
            max_size=4,
        ),
        st.sampled_from([b" ", b"\t", b" \t "]),
    )
    def test_near_commands_give_a_command_or_a_refusal(
        self, keyword: bytes, params: list[bytes], separator: bytes
    ) -> None:
        self._command_or_refusal(separator.join([keyword, *params]))

    def _command_or_refusal(self, line: bytes) -> None:
        try:
            command = parse_command(line)
        except CommandError as e:
            r = e.response
            self.assertIs(r.indicator, Indicator.BAD)
            self.assertIn(r.reasons, [("syntax",), ("unknown-command",), ("line-too-long",)])
            self.assertIn(r.text, ERROR_TEXTS)
            self.assertEqual(wire_lines(r.to_bytes()), [r.to_bytes()[:-2]])
        else:
            self.assertIsInstance(command, Track | Comment | StartTLS | Quit)
            # What was accepted survives its own serialisation (which may
            # add a pair of angle brackets, hence the margin).
            if len(line) <= MAX_LINE - 2:
                self.assertEqual(parse_command(command.to_bytes()[:-2]), command)

    @FAST
    @given(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60),
        st.binary(max_size=60).map(base64.b64encode),
    )
    def test_track_round_trip(self, envid: str, secret: bytes) -> None:
        try:
            track = Track(envid, secret.decode())
        except ValueError:
            # Only an empty secret and ids whose brackets do not balance.
            self.assertTrue(secret == b"" or envid.startswith("<") or envid.endswith(">"))
            return
        self.assertEqual(Track(track.envid, track.secret), track, "normalising is idempotent")
        self.assertEqual(parse_command(track.to_bytes()[:-2]), track)
        self.assertEqual(track_line(envid, secret.decode()), track.to_bytes())


class BuilderTests(SynchronousTestCase):
    def test_track_line(self) -> None:
        expected = b"TRACK <12345-20010101@example.com> YWJjZGVmZ2gK\r\n"
        self.assertEqual(track_line(seed.ENVID, seed.SECRET_B64), expected)
        self.assertEqual(track_line("<" + seed.ENVID + ">", seed.SECRET_B64), expected)

    def test_track_line_refuses_injection(self) -> None:
        for envid, secret in (
            ("a\r\nQUIT", seed.SECRET_B64),
            ("a", seed.SECRET_B64 + "\r\nQUIT"),
            ("a b", seed.SECRET_B64),
            ("", seed.SECRET_B64),
            ("<>", seed.SECRET_B64),
            ("caf\u00e9", seed.SECRET_B64),
            ("a", "not base64"),
            ("a", ""),
            ("x" * 990, seed.SECRET_B64),
        ):
            self.assertRaises(ValueError, track_line, envid, secret)
        self.assertRaises(TypeError, track_line, b"a", seed.SECRET_B64)

    def test_starttls_line(self) -> None:
        self.assertEqual(starttls_line("Mtqp.Example.COM."), b"STARTTLS mtqp.example.com\r\n")
        for domain in ("localhost", "a.example\r\nQUIT", "a .example", "", "192.0.2.1"):
            self.assertRaises(ValueError, starttls_line, domain)
            self.assertFalse(can_name_for_starttls(domain), domain)
        self.assertTrue(can_name_for_starttls("Mtqp.Example.COM."))

    def test_comment_line(self) -> None:
        self.assertEqual(comment_line(), b"COMMENT\r\n")
        self.assertEqual(comment_line(" hello there "), b"COMMENT hello there\r\n")
        for text in ("a\r\nQUIT", "\x00", "caf\u00e9", "x" * 991):
            self.assertRaises(ValueError, comment_line, text)

    def test_quit_line(self) -> None:
        self.assertEqual(QUIT_LINE, b"QUIT\r\n")
        self.assertEqual(parse_command(QUIT_LINE[:-2]), Quit())
        self.assertEqual(Quit().to_bytes(), QUIT_LINE)


class ResponseTests(SynchronousTestCase):
    def test_single_line(self) -> None:
        r = Response(Indicator.TEMP, ("Tls-Required",), "  Use TLS ")
        self.assertEqual(r.reasons, ("tls-required",))
        self.assertEqual(r.text, "Use TLS")
        self.assertEqual(r.to_bytes(), b"-TEMP/tls-required Use TLS\r\n")
        self.assertTrue(r.has_reason("TLS-REQUIRED"))
        self.assertFalse(r.has_reason("tls"))
        self.assertEqual(Response(Indicator.OK).to_bytes(), b"+OK\r\n")
        self.assertEqual(Response("-BAD", ("a", "b_c")).to_bytes(), b"-BAD/a/b_c\r\n")

    def test_mtqp_is_spelled_as_in_the_rfc(self) -> None:
        r = Response(Indicator.OK, ("mtqp",), "ready")
        self.assertEqual(r.reasons, ("mtqp",))
        self.assertEqual(r.to_bytes(), b"+OK/MTQP ready\r\n")

    def test_multi_line(self) -> None:
        r = Response(Indicator.OK_MULTI, (), "Tracking information follows", [b"a", b".b", b"."])
        self.assertEqual(r.lines, (b"a", b".b", b"."))
        self.assertEqual(
            r.to_bytes(), b"+OK+ Tracking information follows\r\na\r\n..b\r\n..\r\n.\r\n"
        )
        empty = Response(Indicator.OK_MULTI, ("mtqp",))
        self.assertEqual(empty.lines, ())
        self.assertEqual(empty.to_bytes(), b"+OK+/MTQP\r\n.\r\n")
        self.assertEqual(
            Response(Indicator.OK_MULTI, (), "", (b"",)).to_bytes(), b"+OK+\r\n\r\n.\r\n"
        )
        self.assertTrue(r.is_positive)

    def test_data_line_length(self) -> None:
        # On the wire a line is at most 998 octets, and dot-stuffing adds
        # one: a data line starting with "." may hold 997 octets, any other
        # line 998.  Longer ones are refused when the Response is made.
        plain = b"x" * 998
        dotted = b"." * 997
        r = Response(Indicator.OK_MULTI, (), "", (plain, dotted))
        self.assertEqual([len(line) for line in wire_lines(r.to_bytes())], [4, 998, 998, 1])
        self.assertRaises(ValueError, Response, Indicator.OK_MULTI, (), "", (b"x" * 999,))
        self.assertRaises(ValueError, Response, Indicator.OK_MULTI, (), "", (b"." * 998,))

    def test_invalid_values(self) -> None:
        for kwargs in (
            {"text": "two\r\nlines"},
            {"text": "a\rb"},
            {"text": "a\nb"},
            {"text": "nul\x00"},
            {"text": "esc\x1b[2J"},
            {"text": "c1\x85"},
            {"text": "x" * 995},
            {"reasons": ("",)},
            {"reasons": ("a b",)},
            {"reasons": ("a/b",)},
            {"reasons": ("caf\u00e9",)},
            {"lines": (b"a",)},
            {"lines": ()},
        ):
            self.assertRaises(ValueError, Response, Indicator.OK, **kwargs)
        for lines in ((b"a\r\nb",), (b"a\rb",), (b"a\nb",), (b"ok", b"\n")):
            self.assertRaises(ValueError, Response, Indicator.OK_MULTI, (), "", lines)
        self.assertRaises(TypeError, Response, Indicator.OK, "mtqp")
        self.assertRaises(TypeError, Response, Indicator.OK, (1,))
        self.assertRaises(TypeError, Response, Indicator.OK, (), b"text")
        self.assertRaises(TypeError, Response, Indicator.OK_MULTI, (), "", b"one line")
        self.assertRaises(TypeError, Response, Indicator.OK_MULTI, (), "", ("a str",))
        self.assertRaises(ValueError, Response, "+YES")

    def test_status_line_limit(self) -> None:
        self.assertEqual(len(Response(Indicator.OK, (), "x" * 994).to_bytes()), 1000)
        self.assertRaises(ValueError, Response, Indicator.OK, (), "x" * 995)
        self.assertRaises(ValueError, Response, Indicator.OK, (), "\u00e9" * 498)

    def test_equal_and_hashable(self) -> None:
        a = Response(Indicator.OK_MULTI, ("MTQP",), "x", [b"1"])
        b = Response(Indicator.OK_MULTI, ("mtqp",), " x", (b"1",))
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))


class StatusLineTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        cases = {
            b"+OK": (Indicator.OK, (), ""),
            b"+OK+": (Indicator.OK_MULTI, (), ""),
            b"+ok+/mtqp ready": (Indicator.OK_MULTI, ("mtqp",), "ready"),
            b"-temp/Admin": (Indicator.TEMP, ("admin",), ""),
            b"-ERR/noinfo/X_1-y No such message": (
                Indicator.ERR,
                ("noinfo", "x_1-y"),
                "No such message",
            ),
            b"-BAD\tsyntax error ": (Indicator.BAD, (), "syntax error"),
            b"+OK  two  spaces": (Indicator.OK, (), "two  spaces"),
            b"+OK ": (Indicator.OK, (), ""),
            b"+OK /not-a-reason": (Indicator.OK, (), "/not-a-reason"),
            b"+OK caf\xc3\xa9": (Indicator.OK, (), "caf\u00e9"),
        }
        for line, expected in cases.items():
            self.assertEqual(parse_status_line(line), expected, line)

    def test_refused(self) -> None:
        for line in (
            b"",
            b"OK",
            b"+OKAY",
            b"+OK+foo",
            b"+OK++",
            b"-ERROR",
            b"+OK/",
            b"+OK//a",
            b"+OK/a/",
            b"+OK/a.b",
            b"+OK/a=b text",
            b" +OK",
            b"+OK text\x00",
            b"+OK text\r",
            b"+OK text\x1b",
            b"+OK text\x7f",
            b"+OK caf\xe9",
            b"+OK \xc2\x85",
            b"+OK " + b"x" * 995,
            b"Content-Type: text/plain",
        ):
            self.assertRaises(ResponseError, parse_status_line, line)

    def test_response_error_is_a_value_error(self) -> None:
        self.assertTrue(issubclass(ResponseError, ValueError))


class ResponseParserTests(SynchronousTestCase):
    def test_single_line_returned_at_once(self) -> None:
        parser = ResponseParser()
        self.assertEqual(parser.feed(b"+OK Goodbye"), Response(Indicator.OK, (), "Goodbye"))
        self.assertFalse(parser.in_progress)

    def test_unstuffing(self) -> None:
        parser = ResponseParser()
        got = feed_all(parser, [b"+OK+", b"..", b"...", b".x", b"x.", b"", b"."])
        self.assertEqual(got[0].lines, (b".", b"..", b"x", b"x.", b""))

    def test_long_lines(self) -> None:
        parser = ResponseParser()
        self.assertIsNone(parser.feed(b"+OK+"))
        self.assertIsNone(parser.feed(b"x" * 998))
        self.assertRaises(ResponseError, parser.feed, b"x" * 999)
        self.assertRaises(ResponseError, ResponseParser().feed, b"+OK " + b"x" * 995)

    def test_bare_cr_or_lf_in_a_data_line(self) -> None:
        for line in (b"a\rb", b"a\n", b"\r"):
            parser = ResponseParser()
            parser.feed(b"+OK+")
            self.assertRaises(ResponseError, parser.feed, line)

    def test_malformed_status_line(self) -> None:
        parser = ResponseParser()
        self.assertRaises(ResponseError, parser.feed, b"Tracking information follows")
        self.assertRaises(ResponseError, parser.feed, b".")

    def test_line_cap(self) -> None:
        parser = ResponseParser(max_lines=2)
        self.assertEqual(len(feed_all(parser, [b"+OK+", b"a", b"b", b"."])[0].lines), 2)
        feed_all(parser, [b"+OK+", b"a", b"b"])
        self.assertRaises(ResponseError, parser.feed, b"c")
        # The parser starts over at a status line after a refusal.
        self.assertFalse(parser.in_progress)
        self.assertEqual(parser.feed(b"-ERR/x"), Response(Indicator.ERR, ("x",)))

    def test_octet_cap(self) -> None:
        # "+OK+" CRLF is 6 octets, "abcd" CRLF another 6; "." is not counted.
        parser = ResponseParser(max_octets=18)
        self.assertEqual(
            feed_all(parser, [b"+OK+", b"abcd", b"abcd", b"."]),
            [Response(Indicator.OK_MULTI, (), "", (b"abcd", b"abcd"))],
        )
        feed_all(parser, [b"+OK+", b"abcd", b"abcd"])
        self.assertRaises(ResponseError, parser.feed, b"")
        self.assertRaises(ResponseError, ResponseParser(max_octets=5).feed, b"+OK+")
        self.assertRaises(ValueError, ResponseParser, -1)

    def test_default_caps_hold_a_large_report(self) -> None:
        parser = ResponseParser()
        self.assertIsNone(parser.feed(b"+OK+"))
        line = b"y" * 100
        for _ in range(99_999):
            parser.feed(line)
        self.assertEqual(len(parser.feed(b".").lines), 99_999)

    @FAST
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=20),
                st.binary(min_size=995, max_size=1001),
                st.sampled_from(
                    [b"+OK+", b"+OK+/MTQP x", b"+OK", b"-ERR/a", b".", b"..", b".x", b"\r"]
                ),
            ),
            max_size=30,
        ),
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=0, max_value=3000),
    )
    def test_any_lines_give_responses_or_response_errors(
        self, lines: list[bytes], max_lines: int, max_octets: int
    ) -> None:
        parser = ResponseParser(max_lines=max_lines, max_octets=max_octets)
        for line in lines:
            try:
                response = parser.feed(line)
            except ResponseError:
                continue
            if response is not None:
                self.assertIsInstance(response, Response)
                # Whatever was accepted can be sent on unchanged.
                again = feed_all(ResponseParser(), wire_lines(response.to_bytes()))
                self.assertEqual(again, [response])


def data_lines() -> st.SearchStrategy[bytes]:
    no_crlf = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    return st.one_of(
        no_crlf,
        no_crlf.map(lambda b: b"." + b),
        st.sampled_from([b"", b".", b"..", b"\x00", b"." * 997, b".x" * 498 + b"y", b"x" * 998]),
    )


reasons = st.lists(st.text("abcMTQP019_-", min_size=1, max_size=8), max_size=3)
texts = st.text(
    st.one_of(
        st.characters(
            min_codepoint=0x20,
            exclude_categories=("Cs",),
            exclude_characters="".join(map(chr, range(0x7F, 0xA0))),
        ),
        st.just("\t"),
    ),
    max_size=40,
)


class RoundTripTests(SynchronousTestCase):
    @FAST
    @given(reasons, texts, st.lists(data_lines(), max_size=20))
    def test_dot_stuffing_round_trip(
        self, names: list[str], text: str, lines: list[bytes]
    ) -> None:
        sent = Response(Indicator.OK_MULTI, tuple(names), text, tuple(lines))
        octets = sent.to_bytes()
        self.assertTrue(octets.endswith(b"\r\n.\r\n"))
        split = wire_lines(octets)
        self.assertTrue(all(len(line) <= MAX_LINE for line in split))
        self.assertEqual(len(split), len(lines) + 2)
        parser = ResponseParser()
        for line in split[:-1]:
            self.assertIsNone(parser.feed(line))
        self.assertEqual(parser.feed(split[-1]), sent)

    @FAST
    @given(st.sampled_from([i for i in Indicator if i is not Indicator.OK_MULTI]), reasons, texts)
    def test_status_line_round_trip(
        self, indicator: Indicator, names: list[str], text: str
    ) -> None:
        sent = Response(indicator, tuple(names), text)
        [line] = wire_lines(sent.to_bytes())
        self.assertEqual(
            parse_status_line(line),
            (indicator, tuple(n.lower() for n in names), text.strip(" \t")),
        )
        self.assertEqual(ResponseParser().feed(line), sent)

    @FAST
    @given(
        st.sampled_from([b"+OK", b"+ok+", b"-TEMP", b"-err", b"-BAD"]),
        st.binary(max_size=40),
    )
    def test_accepted_status_lines_are_stable(self, indicator: bytes, rest: bytes) -> None:
        try:
            parsed = parse_status_line(indicator + rest)
        except ResponseError:
            return
        again = Response(*parsed).to_bytes()
        self.assertEqual(parse_status_line(wire_lines(again)[0]), parsed)


def receive_all(parser: ResponseParser, chunks: list[bytes]) -> list[Response]:
    """Give the parser each chunk as a shell would; every response it completes, in order."""
    done = []
    for chunk in chunks:
        parser.receive(chunk)
        while (response := parser.next_response()) is not None:
            done.append(response)
    return done


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, in order)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


class StreamTests(SynchronousTestCase):
    """`ResponseParser.receive`: octets as they come off a connection, cut anywhere."""

    @FAST
    @given(
        st.lists(
            st.one_of(
                st.builds(
                    lambda names, text, lines: Response(
                        Indicator.OK_MULTI, tuple(names), text, tuple(lines)
                    ),
                    reasons,
                    texts,
                    st.lists(data_lines(), max_size=12),
                ),
                st.builds(
                    Response,
                    st.sampled_from([i for i in Indicator if i is not Indicator.OK_MULTI]),
                    reasons,
                    texts,
                ),
            ),
            min_size=1,
            max_size=5,
        ),
        st.lists(st.integers(min_value=0), max_size=40),
    )
    def test_cut_anywhere_gives_what_lines_give(
        self, responses: list[Response], cuts: list[int]
    ) -> None:
        data = b"".join(r.to_bytes() for r in responses)
        by_lines = feed_all(ResponseParser(), wire_lines(data))
        self.assertEqual(by_lines, responses)
        self.assertEqual(receive_all(ResponseParser(), split_at(data, cuts)), responses)
        # One octet at a time: every response is found once its "." line ends.
        self.assertEqual(receive_all(ResponseParser(), [bytes([b]) for b in data]), responses)

    def test_whole_answers_in_one_chunk(self) -> None:
        parser = ResponseParser()
        data = seed.EXAMPLES[8].response_bytes() * 3 + b"+OK bye\r\n-ERR/x"
        got = receive_all(parser, [data])
        self.assertEqual(len(got), 4)
        self.assertEqual(got[0].lines, got[2].lines)
        self.assertIn(b"..Dot-Stuffed-Header", data)
        self.assertIn(b".Dot-Stuffed-Header", b"\n".join(got[0].lines))
        self.assertNotIn(b"..Dot-Stuffed-Header", b"\n".join(got[0].lines))
        self.assertEqual(got[3], Response(Indicator.OK, (), "bye"))
        # The unfinished status line waits for its CRLF.
        self.assertIsNone(parser.next_response())
        self.assertEqual(receive_all(parser, [b"\r\n"]), [Response(Indicator.ERR, ("x",))])

    def test_empty_and_blank_bodies(self) -> None:
        got = receive_all(ResponseParser(), [b"+OK+\r\n.\r\n+OK+\r\n\r\n.\r\n"])
        self.assertEqual([r.lines for r in got], [(), (b"",)])

    def test_a_long_line_is_refused_before_its_crlf(self) -> None:
        for prefix in (b"", b"+OK+\r\n", b"+OK+\r\nfirst\r\n"):
            parser = ResponseParser()
            parser.receive(prefix + b"x" * 998)
            self.assertIsNone(parser.next_response())
            parser.receive(b"\r")  # may still be the end of a 998-octet line
            self.assertIsNone(parser.next_response())
            parser = ResponseParser()
            parser.receive(prefix + b"x" * 999)
            self.assertRaises(ResponseError, parser.next_response)

    def test_caps_hold_while_a_response_drips_in(self) -> None:
        # A server that never sends the "." line: the parser refuses once
        # the cap is passed, holding no more than the cap and one line.
        parser = ResponseParser(max_octets=10_000)
        parser.receive(b"+OK+\r\n")
        self.assertIsNone(parser.next_response())
        with self.assertRaises(ResponseError) as caught:
            for _ in range(1000):
                parser.receive(b"y" * 98 + b"\r\n")
                self.assertIsNone(parser.next_response())
        self.assertIn("octet cap", str(caught.exception))
        self.assertEqual(len(parser._buffer), 0)  # forgotten, not kept
        parser = ResponseParser(max_lines=3)
        parser.receive(b"+OK+\r\na\r\nb\r\nc\r\n")
        self.assertIsNone(parser.next_response())
        parser.receive(b"d\r\n")
        self.assertRaises(ResponseError, parser.next_response)
        # Whole in one chunk, the same caps.
        parser = ResponseParser(max_lines=3)
        parser.receive(b"+OK+\r\na\r\nb\r\nc\r\nd\r\n.\r\n")
        self.assertRaises(ResponseError, parser.next_response)

    def test_bare_cr_or_lf_in_a_data_line(self) -> None:
        for body in (b"a\rb", b"a\n", b"\r", b"\n\n"):
            for tail in (b"\r\n.\r\n", b"\r\nmore"):  # complete, and still coming
                parser = ResponseParser()
                parser.receive(b"+OK+\r\nok\r\n" + body + tail)
                self.assertRaises(ResponseError, parser.next_response)

    def test_starts_over_after_an_error(self) -> None:
        parser = ResponseParser()
        parser.receive(b"garbage\r\n+OK fine\r\n")
        self.assertRaises(ResponseError, parser.next_response)
        # What was buffered with the bad line is dropped with it.
        self.assertIsNone(parser.next_response())
        self.assertEqual(
            receive_all(parser, [b"+OK again\r\n"]), [Response(Indicator.OK, (), "again")]
        )


class GreetingAndOptionTests(SynchronousTestCase):
    def test_greeting_without_options(self) -> None:
        self.assertEqual(
            greeting("mtqp.example.com").to_bytes(),
            b"+OK/MTQP mtqp.example.com MTQP server ready\r\n",
        )

    def test_greeting_with_options(self) -> None:
        g = greeting("mtqp.example.com", ["STARTTLS required", " continued", ".vnd.odd"])
        self.assertEqual(
            g.to_bytes(),
            b"+OK+/MTQP mtqp.example.com MTQP server ready\r\n"
            b"STARTTLS required\r\n continued\r\n..vnd.odd\r\n.\r\n",
        )
        [parsed] = feed_all(ResponseParser(), wire_lines(g.to_bytes()))
        self.assertEqual(parsed, g)
        options = parse_options(parsed.lines)
        self.assertEqual(options, {"starttls": "required continued", ".vnd.odd": ""})
        self.assertTrue(starttls_required(options))

    def test_greeting_admin_down(self) -> None:
        g = greeting("mtqp.example.com", ["STARTTLS"], admin_down=True)
        self.assertEqual(
            g.to_bytes(),
            b"-TEMP/MTQP/admin mtqp.example.com MTQP service down for administration,"
            b" call back later\r\n",
        )
        self.assertEqual(g.reasons, ("mtqp", "admin"))

    def test_greeting_refuses_bad_values(self) -> None:
        for hostname in ("", "two words", "a\r\nb", "caf\u00e9.example", "x" * 990):
            self.assertRaises(ValueError, greeting, hostname)
        for option in ("", "   ", "STARTTLS\r\nQUIT", "caf\u00e9"):
            self.assertRaises(ValueError, greeting, "h.example", [option])
        self.assertRaises(TypeError, greeting, "h.example", "STARTTLS")
        self.assertRaises(TypeError, greeting, "h.example", [b"STARTTLS"])

    def test_parse_options(self) -> None:
        self.assertEqual(
            parse_options(
                [
                    "  orphan continuation",
                    b"STARTTLS",
                    b"",
                    b"VND.Com.Example.X  a\tb ",
                    b"\t c",
                    b"starttls Required",
                ]
            ),
            {"starttls": "Required", "vnd.com.example.x": "a b c"},
        )

    def test_starttls_helpers(self) -> None:
        self.assertFalse(starttls_offered({}))
        self.assertFalse(starttls_required({}))
        self.assertTrue(starttls_offered({"starttls": ""}))
        self.assertFalse(starttls_required({"starttls": ""}))
        self.assertTrue(starttls_required({"starttls": "REQUIRED"}))
        self.assertFalse(starttls_required({"starttls": "not-required"}))
        self.assertFalse(starttls_required({"vnd.x": "required"}))
