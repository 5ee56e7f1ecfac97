# -*- test-case-name: tests.test_report -*-
"""Tests for mtqpgw.report: the multipart/related TRACK answer, its wire mapping and JSON."""

from __future__ import annotations

import email
import email.policy
import json
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw import report, wire
from mtqpgw.report import (
    GARBLED,
    ReportError,
    answer_from_json,
    answer_from_response,
    answer_to_json,
    build_report,
    parse_report,
    parse_report_counted,
    response_for_answer,
)
from mtqpgw.status import Action, Answer, Outcome, RecipientStatus, TrackingStatus
from tests.seed import (
    ARRIVAL_DATE,
    CLOSE_DELIMITER,
    DOT_STUFFED,
    ENVID,
    EXAMPLES,
    LAST_ATTEMPT_DATE,
    LOST_PREFIXES,
    STATUS_COLON,
    TYPE_PARAMETER,
)
from tests.test_status import normalised, small_tracking_statuses, tracking_statuses

FAST = settings(max_examples=200, deadline=None)

_PART = TrackingStatus(
    original_envelope_id=ENVID,
    reporting_mta="dns; example2.com",
    recipients=(RecipientStatus("rfc822; a@example1.com", Action.DELIVERED, "2.5.0"),),
)


def _stdlib(lines: list[bytes] | tuple[bytes, ...]) -> email.message.Message:
    return email.message_from_bytes(
        b"".join(line + b"\r\n" for line in lines), policy=email.policy.default
    )


def _feed(data: bytes) -> wire.Response:
    parser = wire.ResponseParser()
    responses = [parser.feed(line) for line in data.split(b"\r\n")[:-1]]
    *opening, last = responses
    assert all(r is None for r in opening) and last is not None
    return last


class SeedReportTests(SynchronousTestCase):
    """Seed examples 6 to 12 as whole TRACK answer bodies (tests/seed.py)."""

    def test_corrected_examples(self) -> None:
        # Corrections: CLOSE_DELIMITER and TYPE_PARAMETER everywhere, plus
        # each example's own (example.corrections).
        for number, example in EXAMPLES.items():
            self.assertIn(CLOSE_DELIMITER, example.corrections)
            self.assertIn(TYPE_PARAMETER, example.corrections)
            self.assertEqual(parse_report_counted(example.lines), (example.parts, 0), number)

    def test_raw_examples(self) -> None:
        # As extracted, uncorrected: type=tracking-status, an unquoted %%%%,
        # "Status:2.4.0" (7, 11) are accepted as they are.  Every example
        # ends "--%%%%-" (CLOSE_DELIMITER): no close delimiter, and one
        # malformed line in the last part.
        for number in (6, 7, 8, 11, 12):
            example = EXAMPLES[number]
            self.assertEqual(parse_report_counted(example.raw_lines), (example.parts, 1), number)

    def test_raw_example_8_dot_stuffed_header(self) -> None:
        # DOT_STUFFED: after the client removed one dot the line is
        # ".Dot-Stuffed-Header: as an example", an unknown header: ignored.
        example = EXAMPLES[8]
        self.assertIn(DOT_STUFFED, example.corrections)
        self.assertIn(b".Dot-Stuffed-Header: as an example", example.raw_lines)
        self.assertIn(b".Dot-Stuffed-Header: as an example", example.lines)
        self.assertEqual(parse_report(example.raw_lines), example.parts)

    def test_raw_example_9_status_without_colon(self) -> None:
        # STATUS_COLON uncorrected: the line is skipped and counted; user2's
        # status becomes the generic 5.0.0 of Action "failed".
        example = EXAMPLES[9]
        self.assertIn(STATUS_COLON, example.corrections)
        parts, skipped = parse_report_counted(example.raw_lines)
        self.assertEqual(skipped, 2)
        user1, user2 = example.parts[0].recipients
        self.assertEqual(
            parts, (example.parts[0].evolve(recipients=(user1, user2.evolve(status="5.0.0"))),)
        )

    def test_raw_example_10(self) -> None:
        # LOST_PREFIXES: as extracted, the second part's delimiter carries the
        # page-break space.  A line starting with white space is no delimiter
        # (RFC 2046) but a continuation line (RFC 5322): the second part is
        # not found, though nothing breaks.
        example = EXAMPLES[10]
        self.assertIn(LOST_PREFIXES, example.corrections)
        self.assertIn(b" --%%%%", example.raw_lines)
        self.assertEqual(len(parse_report(example.raw_lines)), 1)
        # Without that one space, the part's lost empty lines are recovered:
        # its headers end at the first tracking-status field, and the
        # per-message group at the first per-recipient field.
        lines = [b"--%%%%" if line == b" --%%%%" else line for line in example.raw_lines]
        self.assertEqual(parse_report_counted(lines), (example.parts, 1))

    def test_seed_response_end_to_end(self) -> None:
        # The corrected examples as a server sends them (dot-stuffed, with
        # the "." line), through wire.ResponseParser and answer_from_response.
        for number, example in EXAMPLES.items():
            data = example.response_bytes()
            if number == 8:
                self.assertIn(b"\r\n..Dot-Stuffed-Header: as an example\r\n", data)
            response = _feed(data)
            self.assertEqual(response.lines, example.lines)
            self.assertEqual(answer_from_response(response), example.answer, number)

    def test_seed_answers_rebuilt(self) -> None:
        for number, example in EXAMPLES.items():
            lines = build_report(example.parts)
            self.assertEqual(parse_report(lines), example.parts, number)
            message = _stdlib(lines)
            self.assertEqual(message.get_content_type(), "multipart/related")
            self.assertEqual(len(message.get_payload()), len(example.parts), number)


class BuildReportTests(SynchronousTestCase):
    def test_shape(self) -> None:
        second = _PART.evolve(reporting_mta="dns; example3.com")
        lines = build_report([_PART, second], boundary="b1")
        body = [
            b"Original-Envelope-Id: 12345-20010101@example.com",
            b"Reporting-MTA: dns; example2.com",
            b"",
            b"Final-Recipient: rfc822; a@example1.com",
            b"Action: delivered",
            b"Status: 2.5.0",
        ]
        self.assertEqual(
            lines,
            [
                b'Content-Type: multipart/related; boundary="b1"; type="message/tracking-status"',
                b"",
                b"--b1",
                b"Content-Type: message/tracking-status",
                b"",
                *body,
                b"",
                b"--b1",
                b"Content-Type: message/tracking-status",
                b"",
                body[0],
                b"Reporting-MTA: dns; example3.com",
                *body[2:],
                b"",
                b"--b1--",
            ],
        )

    def test_boundary_follows_content(self) -> None:
        # Same parts, same octets (so unknown envid and wrong secret cannot be
        # told apart by the boundary); other parts, another boundary.
        first, second = build_report([_PART])[0], build_report([_PART])[0]
        self.assertEqual(first, second)
        other = build_report([_PART.evolve(reporting_mta="dns; example3.com")])[0]
        self.assertNotEqual(first, other)
        self.assertTrue(first.startswith(b'Content-Type: multipart/related; boundary="mtqp-'))

    def test_boundary_never_in_a_part(self) -> None:
        # The derivation is retried until its token occurs in no part.  A
        # part cannot contain its own hash, so the first try is forced.
        part = _PART.evolve(extensions=(("X-Trap", "mtqp-first"),))
        real = report._content_boundary

        def first_collides(blob: bytes, attempt: int) -> str:
            return "mtqp-first" if attempt == 0 else real(blob, attempt)

        with mock.patch.object(report, "_content_boundary", first_collides):
            lines = build_report([part])
        boundary = lines[0].split(b'"')[1]
        self.assertNotEqual(boundary, b"mtqp-first")
        self.assertTrue(boundary.startswith(b"mtqp-"))
        self.assertEqual(lines[-1], b"--" + boundary + b"--")
        # A boundary given by the caller is checked, not retried.
        self.assertRaises(ValueError, build_report, [part], boundary="mtqp-first")

    def test_refusals(self) -> None:
        self.assertRaises(ValueError, build_report, [])
        for bad in ("", "%%%%", "a" * 71, "ends with space ", 'quote"'):
            self.assertRaises(ValueError, build_report, [_PART], boundary=bad)
        build_report([_PART], boundary="a" * 70)

    def test_stdlib_reads_it(self) -> None:
        # An independent MIME parser agrees on the structure (as h11 checks
        # itself against http.client).
        parts = [_PART, _PART.evolve(reporting_mta="dns; example3.com"), _PART]
        message = _stdlib(build_report(parts))
        self.assertTrue(message.is_multipart())
        self.assertEqual(message.get_content_type(), "multipart/related")
        self.assertEqual(message.get_param("type"), "message/tracking-status")
        self.assertEqual(
            [p.get_content_type() for p in message.get_payload()],
            ["message/tracking-status"] * 3,
        )
        self.assertEqual(message.defects, [])

    @FAST
    @given(
        st.lists(small_tracking_statuses, min_size=1, max_size=2)
        | tracking_statuses.map(lambda t: [t])
    )
    def test_round_trip(self, parts: list[TrackingStatus]) -> None:
        lines = build_report(parts)
        for line in lines:
            self.assertLessEqual(len(line) + line.startswith(b"."), 998)
        self.assertEqual(parse_report_counted(lines), (tuple(map(normalised, parts)), 0))
        message = _stdlib(lines)
        self.assertEqual(len(message.get_payload()), len(parts))
        self.assertEqual(
            {p.get_content_type() for p in message.get_payload()}, {"message/tracking-status"}
        )


class ParseReportTests(SynchronousTestCase):
    def _lines(self, *extra: bytes, header: bytes | None = None) -> list[bytes]:
        lines = build_report([_PART], boundary="b1")
        if header is not None:
            lines[0] = header
        return [*lines[:-1], *extra, lines[-1]]

    def test_content_type_spellings(self) -> None:
        for header in (
            b"Content-Type: multipart/related; boundary=b1; type=tracking-status",
            b'content-type:MULTIPART/Related;BOUNDARY="b1"',
            b'Content-Type: multipart/related; type="message/tracking-status";\tboundary = "b1" ',
            b"Content-Type: multipart/mixed; boundary=b1",
        ):
            self.assertEqual(parse_report(self._lines(header=header)), (_PART,), header)
        # Folded, and with a quoted-pair.
        lines = self._lines(header=b"Content-Type: multipart/related;")
        lines.insert(1, b'  boundary="\\b1"')
        self.assertEqual(parse_report(lines), (_PART,))

    def test_only_short_part_types_are_cached(self) -> None:
        # Review: a part's Content-Type may unfold to hundreds of KiB.
        report._cached_media_type.cache_clear()
        lines = build_report([_PART], boundary="b1")
        at = lines.index(b"Content-Type: message/tracking-status")
        lines[at] += b";" + b" x=y" * 50_000
        self.assertEqual(parse_report(lines), (_PART,))
        self.assertEqual(report._cached_media_type.cache_info().currsize, 0)
        self.assertEqual(parse_report(build_report([_PART], boundary="b1")), (_PART,))
        self.assertEqual(report._cached_media_type.cache_info().currsize, 1)

    def test_refusals(self) -> None:
        for header in (
            b"Content-Type: text/plain; boundary=b1",
            b"Content-Type: multipart/related",
            b"Content-Type: multipart/related; boundary=",
            b"X-Other: 1",
        ):
            self.assertRaises(ReportError, parse_report, self._lines(header=header))
        for lines in ([], [b""], [b"garbage"], [b"Content-Type: multipart/related; boundary=b1"]):
            self.assertRaises(ReportError, parse_report, lines)
        self.assertTrue(issubclass(ReportError, ValueError))

    def test_padding_preamble_epilogue_missing_close(self) -> None:
        lines = build_report([_PART, _PART], boundary="b1")
        lines.insert(2, b"This is the preamble.")
        lines[3] += b" \t "  # transport padding
        lines[-1] += b"  "
        lines += [b"epilogue", b"--b1", b"Content-Type: message/tracking-status"]
        self.assertEqual(parse_report(lines), (_PART, _PART))
        # No close delimiter at all (a truncated answer): what is there counts.
        self.assertEqual(parse_report(build_report([_PART], boundary="b1")[:-1]), (_PART,))
        self.assertEqual(parse_report(build_report([_PART], boundary="b1")[:-2]), (_PART,))
        # A CR left on each line by a LF-only splitter.
        lines = [line + b"\r" for line in build_report([_PART], boundary="b1")]
        self.assertEqual(parse_report(lines), (_PART,))

    def test_near_delimiters_are_body(self) -> None:
        lines = build_report([_PART], boundary="b1")
        # Inside the recipient group, before the part's last empty line: a
        # delimiter may be followed by white space only (or "--" for the
        # close one), so these are body lines.
        lines[-2:-2] = [b"--b1x: not a delimiter", b"--b1-- trailing", b"--b1--trailing"]
        parts, skipped = parse_report_counted(lines)
        self.assertEqual(parts[0].recipients[0].extensions, (("--b1x", "not a delimiter"),))
        # The other two are not fields either (no colon): skipped, counted.
        self.assertEqual(skipped, 2)

    def test_other_parts_skipped(self) -> None:
        lines = build_report([_PART, _PART], boundary="b1")
        # The first part becomes text/plain: skipped, not counted.
        lines[3] = b"Content-Type: text/plain; charset=us-ascii"
        self.assertEqual(parse_report_counted(lines), ((_PART,), 0))
        # A part without Content-Type is read as tracking-status.
        lines[3] = b"Content-ID: <x@y>"
        self.assertEqual(parse_report(lines), (_PART, _PART))
        # An unreadable tracking-status part is skipped and counted; if none
        # is left, that is an error.
        lines = build_report([_PART, _PART], boundary="b1")
        del lines[5:7]  # Original-Envelope-Id and Reporting-MTA of part 1
        self.assertEqual(parse_report_counted(lines), ((_PART,), 1))
        only = build_report([_PART], boundary="b1")
        del only[5]
        with self.assertRaises(ReportError) as caught:
            parse_report(only)
        self.assertIn("Original-Envelope-Id", str(caught.exception))

    @FAST
    @given(st.lists(st.binary(max_size=40), max_size=30))
    def test_arbitrary_lines(self, lines: list[bytes]) -> None:
        try:
            parse_report(lines)
        except ReportError:
            pass

    @FAST
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [
                        b"",
                        b"--b1",
                        b"--b1--",
                        b"--b1 ",
                        b"Content-Type: multipart/related; boundary=b1",
                        b"Content-Type: message/tracking-status",
                        b"Content-Type: text/plain",
                        b"Original-Envelope-Id: e",
                        b"Reporting-MTA: dns; r",
                        b"Final-Recipient: rfc822; a@b",
                        b"Action: failed",
                        b" folded",
                    ]
                ),
                st.binary(max_size=20),
            ),
            max_size=40,
        )
    )
    def test_mime_soup(self, lines: list[bytes]) -> None:
        try:
            parts, skipped = parse_report_counted(lines)
        except ReportError:
            return
        self.assertTrue(parts)
        self.assertGreaterEqual(skipped, 0)
        # What was read can be sent on, and reads back the same.
        self.assertEqual(parse_report_counted(build_report(parts)), (parts, 0))


class ResponseMappingTests(SynchronousTestCase):
    def test_ok(self) -> None:
        response = response_for_answer(Answer.found([_PART]))
        self.assertIs(response.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(response.text, "Tracking information follows")
        self.assertEqual(parse_report(response.lines), (_PART,))
        data = response.to_bytes()
        self.assertTrue(data.startswith(b"+OK+ Tracking information follows\r\nContent-Type: "))
        self.assertEqual(answer_from_response(_feed(data)), Answer.found([_PART]))

    def test_negative(self) -> None:
        cases = [
            (Answer.noinfo(), b"-ERR/noinfo No information about that message\r\n"),
            (Answer.noinfo(""), b"-ERR/noinfo No information about that message\r\n"),
            (Answer(Outcome.NOINFO), b"-ERR/noinfo No information about that message\r\n"),
            (Answer.found([]), b"-ERR/noinfo No information about that message\r\n"),
            (Answer.temp(), b"-TEMP/unavailable\r\n"),
            (Answer.temp(("admin",), "Down for admin"), b"-TEMP/admin Down for admin\r\n"),
            (Answer.error(("tls-required",), "Use TLS"), b"-ERR/tls-required Use TLS\r\n"),
            (Answer.error(("insecure",)), b"-ERR/insecure\r\n"),
            (Answer(Outcome.BAD, reasons=("syntax",), text="What?"), b"-BAD/syntax What?\r\n"),
        ]
        for answer, data in cases:
            self.assertEqual(response_for_answer(answer).to_bytes(), data, answer)

    def test_negative_round_trip(self) -> None:
        self.assertIs(
            answer_from_response(response_for_answer(Answer.error(("noinfo",)))).outcome,
            Outcome.NOINFO,
        )
        for answer in (
            Answer.noinfo(),
            Answer.temp(("admin",), "Down for admin"),
            Answer.error(("tls-required",), "Use TLS"),
            Answer(Outcome.BAD, reasons=("syntax",), text="What?"),
            Answer(Outcome.NOINFO, reasons=("noinfo", "x-more"), text="None"),
        ):
            self.assertEqual(answer_from_response(response_for_answer(answer)), answer)

    def test_any_answer_can_be_sent(self) -> None:
        answer = Answer.error(("not a code", "ok-code", "é"), "line\r\nbreak\x1b[31m" + "x" * 2000)
        data = response_for_answer(answer).to_bytes()
        self.assertTrue(data.startswith(b"-ERR/ok-code line  break [31mxxx"))
        self.assertLessEqual(len(data), 1000)
        self.assertEqual(data.count(b"\r\n"), 1)
        # Too many, or too long, reasons cannot push the text off the line.
        answer = Answer.temp(("a" * 64,) * 15 + ("b" * 65,), "é" * 1000)
        data = response_for_answer(answer).to_bytes()
        self.assertEqual(data.count(b"/"), 10)
        self.assertNotIn(b"bbb", data)
        self.assertLessEqual(len(data), 1000)
        data.decode("utf-8")

    @FAST
    @given(
        st.sampled_from([Outcome.NOINFO, Outcome.TEMP, Outcome.ERROR, Outcome.BAD]),
        st.lists(st.text(max_size=70), max_size=12),
        st.text(max_size=1200),
    )
    def test_any_negative_answer(self, outcome: Outcome, reasons: list[str], text: str) -> None:
        data = response_for_answer(Answer(outcome, reasons=tuple(reasons), text=text)).to_bytes()
        self.assertLessEqual(len(data), 1000)
        # -ERR/noinfo is NOINFO, whatever the Answer that made it was called.
        info = data.rstrip(b"\r\n").split(b" ")[0].lower() + b"/"
        if outcome is Outcome.ERROR and b"/noinfo/" in info:
            outcome = Outcome.NOINFO
        self.assertIs(answer_from_response(_feed(data)).outcome, outcome)

    def test_from_wire(self) -> None:
        cases = [
            (b"-ERR/noinfo Unknown", Answer(Outcome.NOINFO, reasons=("noinfo",), text="Unknown")),
            (b"-ERR/NoInfo", Answer(Outcome.NOINFO, reasons=("noinfo",))),
            (b"-ERR/insecure Go away", Answer.error(("insecure",), "Go away")),
            (b"-TEMP/unavailable Later", Answer.temp(("unavailable",), "Later")),
            (b"-BAD/syntax", Answer(Outcome.BAD, reasons=("syntax",))),
        ]
        for line, answer in cases:
            self.assertEqual(answer_from_response(_feed(line + b"\r\n")), answer, line)

    def test_garbled(self) -> None:
        # A single-line +OK is no TRACK success (RFC 3887 section 4: it MUST
        # be multi-line); a +OK+ without a readable report is garbled too.
        for data in (
            b"+OK Tracking information follows\r\n",
            b"+OK+ Tracking information follows\r\n.\r\n",
            b"+OK+ Here\r\n... tracking details #1\r\ngo here ...\r\n.\r\n",
            b"+OK+\r\nContent-Type: multipart/related; boundary=b\r\n\r\n--b\r\nX: y\r\n.\r\n",
        ):
            answer = answer_from_response(_feed(data))
            self.assertIs(answer.outcome, Outcome.ERROR, data)
            self.assertEqual(answer.reasons, (GARBLED,))
            self.assertTrue(answer.text)


class JSONTests(SynchronousTestCase):
    def test_shape_ok(self) -> None:
        got = answer_to_json(EXAMPLES[9].answer, "example2.com:1038")
        self.assertEqual(
            got,
            {
                "status": "ok",
                "server": "example2.com:1038",
                "hops": [
                    {
                        "reporting_mta": "dns; example2.com",
                        "original_envelope_id": ENVID,
                        "arrival_date": ARRIVAL_DATE,
                        "received_from_mta": None,
                        "dsn_gateway": None,
                        "extensions": {},
                        "recipients": [
                            {
                                "original_recipient": "rfc822; user1@example1.com",
                                "final_recipient": "rfc822; user1@example1.com",
                                "action": "relayed",
                                "status": "2.1.9",
                                "remote_mta": "dns; example3.com",
                                "diagnostic_code": None,
                                "last_attempt_date": LAST_ATTEMPT_DATE,
                                "will_retry_until": None,
                                "extensions": {},
                            },
                            {
                                "original_recipient": "rfc822; user2@example1.com",
                                "final_recipient": "rfc822; user2@example1.com",
                                "action": "failed",
                                "status": "5.2.2 (Mailbox full)",
                                "remote_mta": "dns; example3.com",
                                "diagnostic_code": None,
                                "last_attempt_date": LAST_ATTEMPT_DATE,
                                "will_retry_until": None,
                                "extensions": {},
                            },
                        ],
                    }
                ],
            },
        )
        self.assertEqual(json.loads(json.dumps(got)), got)

    def test_shape_negative(self) -> None:
        self.assertEqual(
            answer_to_json(Answer.noinfo("Nothing"), "h:1038"),
            {"status": "noinfo", "server": "h:1038", "reason": ["noinfo"], "text": "Nothing"},
        )
        for answer, status in (
            (Answer.temp(), "temp"),
            (Answer.error(("insecure",)), "error"),
            (Answer(Outcome.BAD), "bad"),
        ):
            self.assertEqual(answer_to_json(answer, "h")["status"], status)

    def test_extensions(self) -> None:
        part = _PART.evolve(
            extensions=(("X-A", "1"), ("X-B", "2"), ("X-A", "3")),
            recipients=(
                _PART.recipients[0].evolve(extensions=(("X-Q", "q"),), action=Action("queued")),
            ),
        )
        hop = answer_to_json(Answer.found([part]), "h")["hops"][0]
        # A JSON object holds each name once: the first value wins.
        self.assertEqual(hop["extensions"], {"X-A": "1", "X-B": "2"})
        self.assertEqual(hop["recipients"][0]["extensions"], {"X-Q": "q"})
        self.assertEqual(hop["recipients"][0]["action"], "queued")

    @FAST
    @given(st.lists(small_tracking_statuses, max_size=2))
    def test_round_trip(self, parts: list[TrackingStatus]) -> None:
        answer = Answer.found(parts)
        data = json.loads(json.dumps(answer_to_json(answer, "h:1")))

        def first_of_each(extensions: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
            kept: dict[str, str] = {}
            for name, value in extensions:
                kept.setdefault(name, value)
            return tuple(kept.items())

        expected = Answer.found(
            part.evolve(
                extensions=first_of_each(part.extensions),
                recipients=tuple(
                    r.evolve(extensions=first_of_each(r.extensions)) for r in part.recipients
                ),
            )
            for part in parts
        )
        self.assertEqual(answer_from_json(data), expected)

    def test_negative_round_trip(self) -> None:
        self.assertIs(
            answer_from_response(response_for_answer(Answer.error(("noinfo",)))).outcome,
            Outcome.NOINFO,
        )
        for answer in (
            Answer.noinfo(),
            Answer.temp(("admin",), "x"),
            Answer(Outcome.BAD, reasons=("y",)),
        ):
            self.assertEqual(answer_from_json(answer_to_json(answer, "h")), answer)
