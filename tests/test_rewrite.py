"""Tests for mtqpgw.rewrite: hiding inner host names in answers."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.config import RewriteRule
from mtqpgw.merge import HostAnswer, merge_hops
from mtqpgw.rewrite import Rewriter
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus

ENVID = "12345-20010101@example.com"
ARRIVED = "Mon, 1 Jan 2001 15:15:15 -0500"
ATTEMPTED = "Mon, 1 Jan 2001 19:15:03 -0500"


@dataclass(frozen=True)
class Rule:
    """Stands in for mtqpgw.config.RewriteRule: only the three attributes matter."""

    match: str
    replace: str
    addresses: bool = False


HIDE_CORP = Rewriter([Rule("*.corp.example.com", "example.com")])


def recipient(**fields: object) -> RecipientStatus:
    fields.setdefault("final_recipient", "rfc822; user1@example1.com")
    fields.setdefault("action", Action.DELIVERED)
    fields.setdefault("status", "2.5.0")
    return RecipientStatus(**fields)


def part(*recipients: RecipientStatus, **fields: object) -> TrackingStatus:
    fields.setdefault("original_envelope_id", ENVID)
    fields.setdefault("reporting_mta", "dns; example2.com")
    fields.setdefault("arrival_date", ARRIVED)
    return TrackingStatus(recipients=recipients, **fields)


def all_values(ts: TrackingStatus) -> list[str]:
    """Every field value of a part, as it would be serialised."""
    values = [v for v in dataclasses.astuple(ts)[:5] if isinstance(v, str)]
    values += [v for _, v in ts.extensions]
    for block in ts.recipients:
        for f in dataclasses.fields(block):
            v = getattr(block, f.name)
            if isinstance(v, str):
                values.append(v)
        values += [v for _, v in block.extensions]
    return values


class RuleTests(SynchronousTestCase):
    def test_glob_matches_below_not_the_apex(self) -> None:
        self.assertEqual(HIDE_CORP.host("smtp.corp.example.com"), "example.com")
        self.assertEqual(HIDE_CORP.host("a.b.corp.example.com"), "example.com")
        self.assertEqual(HIDE_CORP.host("corp.example.com"), "corp.example.com")
        self.assertEqual(
            HIDE_CORP.host("smtp.corp.example.com.evil"), "smtp.corp.example.com.evil"
        )
        self.assertEqual(HIDE_CORP.host("xcorp.example.com"), "xcorp.example.com")

    def test_glob_listing_both(self) -> None:
        rw = Rewriter(
            [Rule("*.corp.example.com", "example.com"), Rule("corp.example.com", "example.com")]
        )
        self.assertEqual(rw.host("corp.example.com"), "example.com")

    def test_glob_question_mark_and_dots(self) -> None:
        rw = Rewriter([Rule("mx?.example.com", "example.com")])
        self.assertEqual(rw.host("mx1.example.com"), "example.com")
        self.assertEqual(rw.host("mx12.example.com"), "mx12.example.com")
        # A dot in a glob is a dot, not "any character".
        self.assertEqual(rw.host("mx1xexample.com"), "mx1xexample.com")

    def test_case_insensitive_and_trailing_dot(self) -> None:
        self.assertEqual(HIDE_CORP.host("SMTP.Corp.Example.COM."), "example.com")
        rw = Rewriter([Rule("*.CORP.Example.com", "example.com")])
        self.assertEqual(rw.host("smtp.corp.example.com"), "example.com")
        self.assertEqual(
            Rewriter([Rule("re:SMTP\\d\\.corp", "x.example")]).host("smtp1.CORP"), "x.example"
        )

    def test_regex_must_match_whole_name(self) -> None:
        rw = Rewriter([Rule(r"re:mx[0-9]+\.corp\.example\.com", "example.com")])
        self.assertEqual(rw.host("mx12.corp.example.com"), "example.com")
        self.assertEqual(rw.host("amx1.corp.example.com"), "amx1.corp.example.com")
        self.assertEqual(rw.host("mx1.corp.example.com.au"), "mx1.corp.example.com.au")

    def test_first_rule_wins(self) -> None:
        rw = Rewriter(
            [
                Rule("mx1.corp.example.com", "one.example"),
                Rule("*.corp.example.com", "two.example"),
            ]
        )
        self.assertEqual(rw.host("mx1.corp.example.com"), "one.example")
        self.assertEqual(rw.host("mx2.corp.example.com"), "two.example")
        reverse = Rewriter(
            [
                Rule("*.corp.example.com", "two.example"),
                Rule("mx1.corp.example.com", "one.example"),
            ]
        )
        self.assertEqual(reverse.host("mx1.corp.example.com"), "two.example")

    def test_ip_literals(self) -> None:
        rw = Rewriter([Rule("10.0.0.*", "example.com"), Rule(r"re:2001:db8:.*", "example.com")])
        for name in (
            "10.0.0.5",
            "[10.0.0.5]",
            "[IPv6:2001:db8::5]",
            "2001:DB8::5",
            "::ffff:10.0.0.9",
        ):
            self.assertEqual(rw.host(name), "example.com", name)
        self.assertEqual(rw.host("10.0.1.5"), "10.0.1.5")
        self.assertEqual(
            Rewriter([Rule(r"re:10\..*", "example.com")]).host("[10.1.2.3]"), "example.com"
        )
        self.assertEqual(
            Rewriter([Rule("[10.0.0.*]", "example.com")]).host("10.0.0.1"), "example.com"
        )

    def test_ip_rules_match_every_spelling(self) -> None:
        """Review M1: a rule written as an address hides it however an MTA spells it."""
        for match in ("2001:db8::5", "[IPv6:2001:DB8:0:0::5]", "2001:0db8::0005"):
            rw = Rewriter([Rule(match, "example.com")])
            for name in (
                "2001:db8::5",
                "[IPv6:2001:DB8:0:0:0:0:0:5]",
                "2001:0db8::0005",
                "2001:db8:0:0::5",
                "IPv6:2001:Db8::5",
            ):
                self.assertEqual(rw.host(name), "example.com", (match, name))
            self.assertEqual(rw.host("2001:db8::6"), "2001:db8::6")
        v4 = Rewriter([Rule("10.0.0.5", "example.com")])
        for name in (
            "10.0.0.5",
            "[10.0.0.005]",
            "::ffff:10.0.0.5",
            "[IPv6:::FFFF:a00:5]",
            "::10.0.0.5",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
        ):
            self.assertEqual(v4.host(name), "example.com", name)
        for name in ("10.0.0.50", "::1", "::", "10.0.0.256"):
            self.assertEqual(v4.host(name), name)
        # A glob sees an address in its canonical spelling too.
        glob = Rewriter([Rule("2001:db8::*", "example.com")])
        self.assertEqual(glob.host("2001:0DB8:0:0:0:0:0:9"), "example.com")
        # ... and a mapped-IPv6 rule hides the IPv4 address.
        mapped = Rewriter([Rule("::ffff:10.0.0.5", "example.com")])
        self.assertEqual(mapped.host("10.0.0.5"), "example.com")

    def test_ip_rules_in_every_field(self) -> None:
        """Review M1 (/tmp/rv/rw.py): the fast path finds every spelling in free text."""
        rw = Rewriter(
            [Rule("*.corp.example.com", "example.com"), Rule("2001:db8::5", "x.example")]
        )
        for text, expected in (
            ("from [IPv6:2001:DB8:0:0:0:0:0:5]", "from [x.example]"),
            ("from 2001:0db8::0005 refused", "from x.example refused"),
            ("from 2001:db8:0::5: refused", "from x.example: refused"),
            ("to 2001:db8::6 ok", "to 2001:db8::6 ok"),
        ):
            self.assertEqual(rw._text(text), expected, text)
        block = recipient(remote_mta="dns; [IPv6:2001:db8:0:0::5]")
        self.assertEqual(rw.part(part(block)).recipients[0].remote_mta, "dns; x.example")
        ts = part(recipient(), reporting_mta="dns; 2001:DB8::5")
        self.assertEqual(rw.part(ts).reporting_mta, "dns; x.example")
        v4 = Rewriter([Rule("mx.corp.example.com", "a.example"), Rule("10.0.0.5", "b.example")])
        self.assertEqual(
            v4._text("from ::ffff:a00:5 and 10.0.0.005 and ::10.0.0.5"),
            "from b.example and b.example and b.example",
        )

    def test_long_tokens_searched_by_span(self) -> None:
        """Re-review item 4: a token longer than a name may hold one; its spans are searched.

        Until then a token over 255 characters was left alone (to bound a
        glob's backtracking), so text glued around an inner name hid it.
        """
        rw = Rewriter([Rule("*.*.*.corp.example.com", "example.com")])
        long_name = "a." * 120 + "corp.example.com"
        # Not a host name: never matched whole.
        self.assertEqual(rw.host(long_name), long_name)
        self.assertEqual(rw.host("a.b.c.corp.example.com"), "example.com")
        # The longest span a name may be (255) is hidden; the rest is kept.
        self.assertEqual(rw._text(long_name), "a.example.com")
        # Many stars against a long run would backtrack for ages were the
        # whole run tried; spans are at most 255 long, and few are tried.
        text = "smtp; " + "a." * 20000 + "corp.example.com"
        out = rw.part(part(recipient(diagnostic_code=text)))
        self.assertEqual(
            out.recipients[0].diagnostic_code, "smtp; " + "a." * (20000 - 119) + "example.com"
        )
        self.assertEqual(rw.part(out), out)
        hide = Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")])
        for text, expected in (
            ("a_" * 5000 + "mx1.corp.example.com_backup", "a_" * 4883 + "example.com_backup"),
            ("mx1.corp.example.com" + "-x" * 5000, "example.com" + "-x" * 5000),
            ("q" * 300 + "-10.0.0.5", "q" * 300 + "-example.com"),
            ("x" * 300 + ".5.0.0.10.in-addr.arpa42", "x" * 300 + ".example.com42"),
        ):
            self.assertEqual(hide._text(f"at {text} now"), f"at {expected} now")
            self.assertEqual(hide._text(expected), expected)

    def test_long_hostile_token_costs_bounded_work(self) -> None:
        from mtqpgw import rewrite

        rw = Rewriter([Rule("mx?.corp.example.com", "a.example")])
        looked = []
        rule_for = rw._rule_for
        rw._rule_for = lambda name: looked.append(name) or rule_for(name)  # type: ignore[method-assign]
        token = "mxxx.corp.example.com_" * 500  # 11 KB of near misses
        self.assertEqual(rw._text(f"x {token} y"), "x a.example y")  # fail closed
        self.assertLessEqual(len(looked), rewrite._SPAN_TRIES + 1)
        # No rule's text in it: no span is even looked at.
        looked.clear()
        self.assertEqual(rw._text("a_" * 5000), "a_" * 5000)
        self.assertEqual(looked, [])

    def test_bad_rules_refused(self) -> None:
        for bad in (
            Rule("re:(", "example.com"),
            Rule("re:", "example.com"),
            Rule("", "example.com"),
            Rule("*.corp.example.com", ""),
            Rule("*.corp.example.com", "a b"),
            Rule("*.corp.example.com", "dns; x"),
        ):
            self.assertRaises(ValueError, Rewriter, [bad])
        with self.assertRaises(ValueError) as caught:
            Rewriter([Rule("re:[a-", "example.com")])
        self.assertIn("re:[a-", str(caught.exception))

    def test_config_rules(self) -> None:
        rw = Rewriter(
            [
                RewriteRule("*.corp.example.com", "example.com"),
                RewriteRule("re:10\\..*", "example.com", addresses=True),
            ]
        )
        self.assertEqual(rw.host("Mx1.Corp.Example.com."), "example.com")
        self.assertEqual(rw.host("[10.1.2.3]"), "example.com")

    def test_no_rules_is_identity(self) -> None:
        ts = part(recipient(remote_mta="dns; smtp.corp.example.com"))
        rw = Rewriter()
        self.assertIs(rw.part(ts), ts)
        self.assertEqual(rw.host("smtp.corp.example.com"), "smtp.corp.example.com")
        answer = Answer.found([ts])
        self.assertIs(rw.answer(answer), answer)


class FieldTests(SynchronousTestCase):
    def test_every_mta_field_keeps_its_type(self) -> None:
        ts = part(
            recipient(remote_mta="dns; Smtp.Corp.Example.com."),
            reporting_mta="dns; smtp.corp.example.com",
            received_from_mta="dns;mx1.corp.example.com",
            dsn_gateway="dns;  gw.corp.example.com ",
        )
        out = HIDE_CORP.part(ts)
        self.assertEqual(out.reporting_mta, "dns; example.com")
        self.assertEqual(out.received_from_mta, "dns;example.com")
        self.assertEqual(out.dsn_gateway, "dns;  example.com ")
        self.assertEqual(out.recipients[0].remote_mta, "dns; example.com")

    def test_mta_field_odd_forms(self) -> None:
        rw = Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.0.0.*", "example.com")])
        ts = part(
            recipient(remote_mta="dns; [10.0.0.5]"),
            reporting_mta="smtp.corp.example.com",
            received_from_mta="x-local; queue on mx1.corp.example.com",
            dsn_gateway="dns; gw.example.net",
        )
        out = rw.part(ts)
        self.assertEqual(out.recipients[0].remote_mta, "dns; example.com")
        self.assertEqual(out.reporting_mta, "example.com")
        self.assertEqual(out.received_from_mta, "x-local; queue on example.com")
        self.assertEqual(out.dsn_gateway, "dns; gw.example.net")

    def test_diagnostic_code(self) -> None:
        rw = Rewriter(
            [Rule("*.corp.example.com", "example.com"), Rule(r"re:10\..*", "example.com")]
        )
        block = recipient(
            diagnostic_code=(
                "smtp; 550 5.1.1 <u@x.example.net> rejected by mx1.corp.example.com [10.0.0.5]"
                " via relay.example.net (10.0.0.6:25) after mx2.corp.example.com."
            )
        )
        out = rw.part(part(block)).recipients[0]
        self.assertEqual(
            out.diagnostic_code,
            "smtp; 550 5.1.1 <u@x.example.net> rejected by example.com [example.com]"
            " via relay.example.net (example.com:25) after example.com.",
        )

    def test_diagnostic_type_and_non_hosts_untouched(self) -> None:
        # A rule broad enough to match the type, a status code or a number
        # still leaves them: they are not host names.
        rw = Rewriter([Rule("re:smtp|[0-9.]+", "example.com")])
        out = rw.part(part(recipient(diagnostic_code="smtp; 550 5.1.1 smtp said no")))
        self.assertEqual(out.recipients[0].diagnostic_code, "smtp; 550 5.1.1 example.com said no")

    def test_diagnostic_names_around_at_hidden_whatever_the_flag(self) -> None:
        """In free text a name before or after "@" is a name: hidden with or without ``addresses``.

        This expected the text unchanged without ``addresses`` (and the
        local part kept with it) until review M1: that was the leak.
        """
        text = "smtp; 550 <mx1.corp.example.com@a.corp.example.com> and <b@[10.0.0.5]> unknown"
        hidden = "smtp; 550 <example.com@example.com> and <b@[example.com]> unknown"
        rules = [Rule("*.corp.example.com", "example.com"), Rule("10.0.0.*", "example.com")]
        for addresses in (False, True):
            rw = Rewriter([Rule(r.match, r.replace, addresses=addresses) for r in rules])
            out = rw.part(part(recipient(diagnostic_code=text)))
            self.assertEqual(out.recipients[0].diagnostic_code, hidden, addresses)

    def test_review_m1_leaks(self) -> None:
        """The three texts review M1 saw leave the gateway with inner names in them."""
        rw = Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")])
        block = recipient(
            diagnostic_code="smtp; 250 ok id=Q1@mx7.corp.example.com",
            status="2.0.0 (queued as ABC@mx9.corp.example.com)",
            extensions=(("X-Ext", "host=mx7.corp.example.com/10.9.9.9@x"),),
        )
        ts = part(block, extensions=(("X-Queue", "queued as ABC@mx9.corp.example.com"),))
        out = rw.part(ts)
        self.assertEqual(out.recipients[0].diagnostic_code, "smtp; 250 ok id=Q1@example.com")
        self.assertEqual(out.recipients[0].status, "2.0.0 (queued as ABC@example.com)")
        self.assertEqual(
            out.recipients[0].extensions, (("X-Ext", "host=example.com/example.com@x"),)
        )
        self.assertEqual(out.extensions, (("X-Queue", "queued as ABC@example.com"),))

    def test_message_id_and_queue_id_forms(self) -> None:
        rw = Rewriter(
            [
                Rule("*.corp.example.com", "example.com"),
                Rule("10.*", "example.com"),
                Rule(r"re:2001:db8:.*", "example.com"),
            ]
        )
        cases = {
            "smtp; 250 <20010101.ABC@mx7.corp.example.com>": "smtp; 250 <20010101.ABC@example.com>",
            "smtp; 250 id=<a=b/c@[10.1.2.3]>": "smtp; 250 id=<a=b/c@[example.com]>",
            'smtp; 250 "mx7.corp.example.com"@x.example': 'smtp; 250 "example.com"@x.example',
            "smtp; 250 a.mx7.corp.example.com.=x@y": "smtp; 250 example.com.=x@y",
            "smtp; 421 from 2001:db8::5: refused, 10.0.0.5.": (
                "smtp; 421 from example.com: refused, example.com."
            ),
            "smtp; 250 q@2001:db8::7": "smtp; 250 q@example.com",
        }
        for text, expected in cases.items():
            out = rw.part(part(recipient(diagnostic_code=text)))
            self.assertEqual(out.recipients[0].diagnostic_code, expected, text)

    def test_recipient_fields_keep_their_local_part(self) -> None:
        """Original-/Final-Recipient are the client's own addresses: the flag decides, domain only."""
        block = recipient(
            original_recipient="rfc822; mx1.corp.example.com@a.corp.example.com",
            final_recipient="rfc822; q=10.0.0.5@[10.0.0.5] ",
        )
        rules = [Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")]
        self.assertEqual(Rewriter(rules).part(part(block)).recipients[0], block)
        rules = [Rule(r.match, r.replace, addresses=True) for r in rules]
        out = Rewriter(rules).part(part(block)).recipients[0]
        self.assertEqual(out.original_recipient, "rfc822; mx1.corp.example.com@example.com")
        self.assertEqual(out.final_recipient, "rfc822; q=10.0.0.5@example.com ")
        for written, expected in (
            ("rfc822; <u@mbox.corp.example.com>", "rfc822; <u@example.com>"),
            ("rfc822; <u@[10.0.0.5]> ", "rfc822; <u@example.com> "),
            ("rfc822; u@mbox.corp.example.com.", "rfc822; u@example.com"),
            ("rfc822; u@a b.corp.example.com", "rfc822; u@a b.corp.example.com"),
            ("x400; c=us; a=corp.example.com", "x400; c=us; a=corp.example.com"),
        ):
            field = recipient(final_recipient=written)
            out = Rewriter(rules).part(part(field)).recipients[0]
            self.assertEqual(out.final_recipient, expected, written)

    def test_percent_hack_hosts_hidden_whatever_the_flag(self) -> None:
        """Re-review item 3: a %host in a recipient's local part is the inner MTA's name."""
        rules = [Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")]
        for addresses in (False, True):
            rw = Rewriter([Rule(r.match, r.replace, addresses=addresses) for r in rules])
            domain = "example.com" if addresses else "mbox.corp.example.com"
            for written, expected in (
                (
                    "rfc822; jdoe%mx7.corp.example.com@example.com",
                    "rfc822; jdoe%example.com@example.com",
                ),
                (
                    "rfc822; <jdoe%MX7.Corp.Example.com%[10.0.0.5]@mbox.corp.example.com> ",
                    f"rfc822; <jdoe%example.com%example.com@{domain}> ",
                ),
                ("rfc822; jdoe%mx7.corp.example.com", "rfc822; jdoe%example.com"),
                # Hops no rule matches, and "%" that is no hop, stay.
                (
                    "rfc822; a%relay.example.net@example.com",
                    "rfc822; a%relay.example.net@example.com",
                ),
                ("rfc822; 100%@example.com", "rfc822; 100%@example.com"),
                (
                    "rfc822; a%corp.example.com@example.com",
                    "rfc822; a%corp.example.com@example.com",
                ),
            ):
                block = recipient(final_recipient=written, original_recipient=written)
                out = rw.part(part(block)).recipients[0]
                self.assertEqual(out.final_recipient, expected, (addresses, written))
                self.assertEqual(out.original_recipient, expected, (addresses, written))
                self.assertEqual(rw.part(part(out)).recipients[0], out)
        # In free text "%" ends a token: the hop is a name like any other.
        rw = Rewriter(rules)
        self.assertEqual(
            rw._text("550 <jdoe%mx7.corp.example.com@example.com> unknown"),
            "550 <jdoe%example.com@example.com> unknown",
        )

    def test_ipv6_in_text(self) -> None:
        rw = Rewriter([Rule(r"re:2001:db8:.*", "example.com")])
        block = recipient(
            diagnostic_code="smtp; 421 [IPv6:2001:db8::5] and 2001:db8::6 busy at 19:15:03, fe80::1"
        )
        self.assertEqual(
            rw.part(part(block)).recipients[0].diagnostic_code,
            "smtp; 421 [example.com] and example.com busy at 19:15:03, fe80::1",
        )

    def test_status_comment(self) -> None:
        block = recipient(
            status="4.4.1 (No answer from mx1.corp.example.com)", action=Action.DELAYED
        )
        out = HIDE_CORP.part(part(block)).recipients[0]
        self.assertEqual(out.status, "4.4.1 (No answer from example.com)")

    def test_extensions(self) -> None:
        ts = part(
            recipient(extensions=(("X-Queue-Host", "q1.corp.example.com"), ("X-Id", "abc"))),
            extensions=(("X-Spool", "dns; spool.corp.example.com"),),
        )
        out = HIDE_CORP.part(ts)
        self.assertEqual(out.extensions, (("X-Spool", "dns; example.com"),))
        self.assertEqual(
            out.recipients[0].extensions, (("X-Queue-Host", "example.com"), ("X-Id", "abc"))
        )

    def test_addresses_flag(self) -> None:
        block = recipient(
            original_recipient="rfc822; User@Sales.Corp.Example.com",
            final_recipient="rfc822; user@mbox.corp.example.com",
        )
        self.assertEqual(HIDE_CORP.part(part(block)).recipients[0], block)
        rw = Rewriter([Rule("*.corp.example.com", "example.com", addresses=True)])
        out = rw.part(part(block)).recipients[0]
        self.assertEqual(out.original_recipient, "rfc822; User@example.com")
        self.assertEqual(out.final_recipient, "rfc822; user@example.com")
        literal = recipient(final_recipient="rfc822; u@[10.0.0.5]")
        rw = Rewriter([Rule("10.0.0.*", "example.com", addresses=True)])
        self.assertEqual(
            rw.part(part(literal)).recipients[0].final_recipient, "rfc822; u@example.com"
        )

    def test_first_matching_rule_decides_for_addresses(self) -> None:
        rw = Rewriter(
            [
                Rule("*.corp.example.com", "example.com", addresses=False),
                Rule("re:.*corp.*", "other.example", addresses=True),
            ]
        )
        block = recipient(final_recipient="rfc822; u@mbox.corp.example.com")
        self.assertEqual(rw.part(part(block)).recipients[0], block)

    def test_untouched_fields(self) -> None:
        ts = part(
            recipient(
                last_attempt_date=ATTEMPTED,
                will_retry_until="Thu, 4 Jan 2001 15:15:15 -0500",
                action=Action("queued"),
            ),
            original_envelope_id="id@smtp.corp.example.com",
        )
        out = Rewriter([Rule("*.corp.example.com", "example.com", addresses=True)]).part(ts)
        self.assertIs(out, ts)

    def test_answer(self) -> None:
        ts = part(recipient(remote_mta="dns; smtp.corp.example.com"))
        out = HIDE_CORP.answer(Answer.found([ts, ts]))
        self.assertTrue(out.ok)
        self.assertEqual([p.recipients[0].remote_mta for p in out.parts], ["dns; example.com"] * 2)
        for negative in (
            Answer.noinfo(),
            Answer.temp(text="mx1.corp.example.com down"),
            Answer.error(),
        ):
            self.assertIs(HIDE_CORP.answer(negative), negative)
        clean = Answer.found([part(recipient())])
        self.assertIs(HIDE_CORP.answer(clean), clean)


class GluedNameTests(SynchronousTestCase):
    """Names with text glued on, which no rule matches whole (re-review item 1)."""

    RULES = Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")])

    def test_glued_names_hidden_rest_kept(self) -> None:
        for text, expected in (
            ("mx1.corp.example.com_backup", "example.com_backup"),
            ("mx1.corp.example.com-relay", "example.com-relay"),
            ("mx1.corp.example.com.Retry", "example.com.Retry"),
            ("queue.mx1.corp.example.com42", "example.com42"),
            ("MX1.CORP.EXAMPLE.COM_backup:25", "example.com_backup:25"),
            ("(spool-mx1.corp.example.com.Retry)", "(example.com.Retry)"),
            ("host-10.0.0.5", "host-example.com"),
            # "10.*" matches "10.0.0.5-out": the glob says so.
            ("relay_10.0.0.5-out", "relay_example.com"),
            ("10.0.0.5_42", "example.com"),  # "10.*" matches it whole
            # The "10." of "10.*" overlaps ".corp.example.com": both are seen.
            ("queue.a10.corp.example.com42", "example.com42"),
        ):
            self.assertEqual(self.RULES._text(text), expected, text)
        block = recipient(
            diagnostic_code="smtp; 451 mx1.corp.example.com_backup busy",
            status="4.4.1 (queue.mx1.corp.example.com42)",
            remote_mta="dns; mx1.corp.example.com-relay",
            extensions=(("X-Retry", "mx1.corp.example.com.Retry"),),
        )
        out = self.RULES.part(part(block)).recipients[0]
        self.assertEqual(out.diagnostic_code, "smtp; 451 example.com_backup busy")
        self.assertEqual(out.status, "4.4.1 (example.com42)")
        self.assertEqual(out.remote_mta, "dns; example.com-relay")
        self.assertEqual(out.extensions, (("X-Retry", "example.com.Retry"),))
        self.assertEqual(self.RULES.part(self.RULES.part(part(block))).recipients[0], out)

    def test_longest_span_from_the_left(self) -> None:
        rw = Rewriter([Rule("mx?.corp.example.com", "a.example")])
        # The glob starts with "mx": the span starts there, the rest is kept.
        self.assertEqual(rw._text("queue.mx1.corp.example.com_x"), "queue.a.example_x")
        self.assertEqual(
            rw._text("mx1.corp.example.com_mx2.corp.example.com-x"), "a.example_a.example-x"
        )
        regex = Rewriter([Rule(r"re:mx[0-9]\.corp\.example\.com", "a.example")])
        self.assertEqual(regex._text("queue.mx1.corp.example.com_x"), "queue.a.example_x")
        # The host API is about whole names only.
        self.assertEqual(rw.host("mx1.corp.example.com_x"), "mx1.corp.example.com_x")

    def test_what_is_not_a_span(self) -> None:
        """No cut between two letters, inside a number, or in an address."""
        v4 = Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.0.0.5", "b.example")])
        for text in (
            "mx.corp.example.community",  # another name
            "corp.example.com_backup",  # the apex: the rule does not match it
            "xcorp.example.com-relay",
            "10.0.0.55_x",  # another address
            "10.0.0.5.25",
            "192.168.10.0.0.5_x",
            "x.10.0.0.50",
        ):
            self.assertEqual(v4._text(text), text, text)
        glob = Rewriter([Rule("10.*", "example.com")])
        # A part of an address is no address, however broad the glob.
        for text in ("192.168.10.5", "192.168.10.5_x", "172.16.10.1:25"):
            self.assertEqual(glob._text(text), text, text)

    def test_hostile_token_costs_bounded_work_and_fails_closed(self) -> None:
        from mtqpgw import rewrite

        rw = Rewriter([Rule("mx?.corp.example.com", "a.example")])
        looked = []
        rule_for = rw._rule_for
        rw._rule_for = lambda name: looked.append(name) or rule_for(name)  # type: ignore[method-assign]
        # Every "mxxx...com" span has the glob's head and tail and fails it.
        token = "mxxx.corp.example.com_" * 10 + "mx1.corp.example.com"
        self.assertLess(len(token), 256)
        out = rw._text(token)
        self.assertLessEqual(len(looked), rewrite._SPAN_TRIES + 1)
        # Out of budget with a rule's text still in it: hidden whole.
        self.assertEqual(out, "a.example")
        # An ordinary glued name costs a few looks.
        looked.clear()
        self.assertEqual(rw._text("queue.mx1.corp.example.com_x"), "queue.a.example_x")
        self.assertLessEqual(len(looked), 3)


def nibbles(address: str) -> str:
    """The ip6.arpa name of an IPv6 address."""
    return (
        ".".join(reversed(ipaddress.IPv6Address(address).exploded.replace(":", ""))) + ".ip6.arpa"
    )


class ReverseNameTests(SynchronousTestCase):
    """Reverse-DNS names of inner addresses (re-review item 2)."""

    RULES = Rewriter(
        [
            Rule("*.corp.example.com", "example.com"),
            Rule("10.*", "example.com"),
            Rule("2001:db8::5", "v6.example"),
        ]
    )

    def test_reverse_names_hidden_whole(self) -> None:
        self.assertEqual(nibbles("2001:db8::5")[:8], "5.0.0.0.")
        for name, expected in (
            ("5.0.0.10.in-addr.arpa", "example.com"),
            ("5.0.0.10.IN-ADDR.ARPA", "example.com"),
            ("005.0.0.10.in-addr.arpa", "example.com"),
            (nibbles("2001:db8::5"), "v6.example"),
            (nibbles("2001:db8::5").upper(), "v6.example"),
            (nibbles("::ffff:10.0.0.5"), "example.com"),  # an IPv4 address in IPv6
            (nibbles("64:ff9b::a00:5"), "example.com"),
        ):
            self.assertEqual(self.RULES.host(name), expected, name)
            self.assertEqual(self.RULES._text(f"PTR {name} said"), f"PTR {expected} said", name)
        for name in (
            "5.2.0.192.in-addr.arpa",
            "0.10.in-addr.arpa",  # a network's zone, not a host
            "5.0.0.256.in-addr.arpa",
            "x.0.0.10.in-addr.arpa",
            nibbles("2001:db8::6"),
            nibbles("2001:db8::5")[2:],  # 31 nibbles
            "in-addr.arpa",
        ):
            self.assertEqual(self.RULES.host(name), name, name)
            self.assertEqual(self.RULES._text(f"PTR {name} said"), f"PTR {name} said", name)

    def test_reverse_names_in_every_field(self) -> None:
        v4 = Rewriter([Rule("10.0.0.5", "b.example")])
        block = recipient(
            remote_mta="dns; 5.0.0.10.in-addr.arpa",
            diagnostic_code="smtp; 550 no PTR for 5.0.0.10.in-addr.arpa_x (queue.5.0.0.10.in-addr.arpa)",
            status="4.4.1 (5.0.0.10.in-addr.arpa.)",
        )
        out = v4.part(part(block, reporting_mta="dns; 5.0.0.10.in-addr.arpa.")).recipients[0]
        self.assertEqual(out.remote_mta, "dns; b.example")
        self.assertEqual(out.diagnostic_code, "smtp; 550 no PTR for b.example_x (queue.b.example)")
        self.assertEqual(out.status, "4.4.1 (b.example.)")
        # The fast path looks at reverse names, though they hold none of the rule's text.
        self.assertIsNotNone(v4._needles)
        self.assertTrue(v4._needles.search(nibbles("fd00::1")))
        self.assertIsNone(HIDE_CORP._needles.search("5.0.0.10.in-addr.arpa"))


class SeedExample12Tests(SynchronousTestCase):
    def test_example_12_from_example_10(self) -> None:
        """Seed example 12 (hiding system names) is example 10's two parts, rewritten.

        Read as two rules: the inner host smtp.example3.com shows as
        example2.com (its Reporting-MTA and the gateway's Remote-MTA), and,
        with addresses = true, the mail domain example3.com as example1.com
        (example 12's Final-Recipient is user4@example1.com where example 10
        has user4@example3.com).  The two parts now both say Reporting-MTA:
        dns; example2.com and stay two parts.  The seed's "--%%%%-S: ." close
        delimiter (seed-defects.md) is a wire matter, not tested here.
        """
        gateway = part(
            recipient(
                original_recipient="rfc822; user1@example1.com",
                final_recipient="rfc822; user1@example1.com",
                action=Action.RELAYED,
                status="2.1.9",
                remote_mta="dns; smtp.example3.com",
                last_attempt_date=ATTEMPTED,
            )
        )
        inner = part(
            recipient(
                original_recipient="rfc822; user2@example1.com",
                final_recipient="rfc822; user4@example3.com",
            ),
            reporting_mta="dns; smtp.example3.com",
        )
        rw = Rewriter(
            [
                Rule("smtp.example3.com", "example2.com"),
                Rule("example3.com", "example1.com", addresses=True),
            ]
        )
        answer = rw.answer(
            Answer.found(merge_hops(gateway, [HostAnswer("smtp.example3.com", [inner])]))
        )
        expected = (
            part(dataclasses.replace(gateway.recipients[0], remote_mta="dns; example2.com")),
            part(
                recipient(
                    original_recipient="rfc822; user2@example1.com",
                    final_recipient="rfc822; user4@example1.com",
                )
            ),
        )
        self.assertEqual(answer.parts, expected)
        self.assertEqual([p.reporting_mta for p in answer.parts], ["dns; example2.com"] * 2)


# Property tests.
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_CASE = st.sampled_from([str.lower, str.upper, str.title])
_INNER_NAME = st.builds(
    lambda labels, case: case(".".join(labels) + ".corp.example.com"),
    st.lists(_LABEL, min_size=1, max_size=3),
    _CASE,
)
_INNER_IP = st.builds(
    lambda a, b, c: f"10.{a}.{b}.{c}",
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)
# Re-review item 2: reverse-DNS names of inner addresses, IPv4 and IPv4-in-IPv6.
_INNER_REVERSE = st.builds(
    lambda a, b, c, case, v6: case(
        nibbles(f"::ffff:10.{a}.{b}.{c}") if v6 else f"{c}.{b}.{a}.10.in-addr.arpa"
    ),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.sampled_from([str.lower, str.upper]),
    st.booleans(),
)
_SECRET = st.one_of(_INNER_NAME, _INNER_IP, _INNER_REVERSE)
_FILLER = st.sampled_from(
    ["rejected", "by", "550", "5.1.1", "mx.example.net", "smtp", "host", "(", ")", "192.0.2.1"]
)
# How a name sits in free text.
_WRAPS = ["{}", "[{}]", "({})", "<u@{}>", "{}.", "{}:25", "{},", "at={}"]
_WRAPS += ["{}_backup", "{}-relay", "{}.Retry", "queue.{}42"]


@st.composite
def _text_with_secrets(draw: st.DrawFn, secrets: list[str]) -> str:
    words = draw(
        st.lists(
            st.one_of(
                _FILLER,
                st.builds(
                    lambda wrap, s: wrap.format(s),
                    st.sampled_from(_WRAPS),
                    st.sampled_from(secrets),
                ),
            ),
            max_size=8,
        )
    )
    return draw(st.sampled_from([" ", ", ", "; ", " / "])).join(words)


@st.composite
def _leaky_part(draw: st.DrawFn) -> tuple[TrackingStatus, list[str]]:
    secrets = draw(st.lists(_SECRET, min_size=1, max_size=4))
    name = st.sampled_from(secrets)

    def mta(value: str) -> str:
        return f"dns; [{value}]" if value[0].isdigit() else f"dns; {value}"

    text = _text_with_secrets(secrets)
    blocks = draw(
        st.lists(
            st.builds(
                RecipientStatus,
                final_recipient=st.one_of(
                    st.builds("rfc822; user@{}".format, name),
                    # Re-review item 3: a percent-hack hop.
                    st.builds("rfc822; user%{}@example.net".format, name),
                ),
                action=st.sampled_from(list(Action)),
                status=st.builds("4.4.1 ({})".format, text),
                original_recipient=st.builds("rfc822; Other@{}".format, name),
                remote_mta=name.map(mta),
                diagnostic_code=st.builds("smtp; {}".format, text),
                extensions=st.lists(st.tuples(st.just("X-Host"), text), max_size=2).map(tuple),
            ),
            max_size=3,
        )
    )
    ts = TrackingStatus(
        original_envelope_id=ENVID,
        reporting_mta=mta(draw(name)),
        received_from_mta=mta(draw(name)),
        dsn_gateway=mta(draw(name)),
        extensions=tuple(draw(st.lists(st.tuples(st.just("X-Spool"), text), max_size=2))),
        recipients=tuple(blocks),
    )
    return ts, secrets


_HIDE_ALL = Rewriter(
    [
        Rule("*.corp.example.com", "example.com", addresses=True),
        Rule("10.*", "example.com", addresses=True),
    ]
)


# Review M1: names in the punctuation that queue ids, Message-IDs and
# key=value diagnostics put around them, under rules without ``addresses``.
_BEFORE = ["", "@", "Q1@", "id=Q1@", "host=", "/", "=", "[", "(", "<", "<u@", '"', "'", ","]
_BEFORE += [".", "..", "x/", "a.b=", "queued as ABC@", "-"]
# Re-review item 1: text glued on before and after, label-bounded.
_BEFORE += ["queue.", "spool-", "q_", "(x-"]
# Re-review item 3: a percent-hack hop ("<jdoe%mx7.corp.example.com@x>").
_BEFORE += ["%", "jdoe%", "<a%b%"]
# Re-review item 4: a token longer than any name around it.
_BEFORE += ["q" * 250 + "-", "a_" * 200]
_AFTER = ["", "@x", "@", "/", "=", "]", ")", ">", '"', "'", ",", ".", "..", ":25", "/x@y"]
_AFTER += ["=q", "@mx.example.net", "-"]
_AFTER += ["_backup", "-relay", ".Retry", "42", "42_x", ".Retry:25"]
_FREE_TEXT_RULES = Rewriter(
    [Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")]
)


@st.composite
def _punctuated_text(draw: st.DrawFn) -> str:
    words = draw(
        st.lists(
            st.one_of(
                _FILLER,
                st.builds(
                    lambda before, secret, after: before + secret + after,
                    st.sampled_from(_BEFORE),
                    _SECRET,
                    st.sampled_from(_AFTER),
                ),
            ),
            min_size=1,
            max_size=8,
        )
    )
    return draw(st.sampled_from([" ", ", ", "; ", "/", "=", "@", " <", "> "])).join(words)


def _free_text_values(ts: TrackingStatus) -> list[str]:
    """The fields rewritten as free text whatever the flag; MTA fields too (never addresses)."""
    values = [ts.reporting_mta, ts.received_from_mta or "", ts.dsn_gateway or ""]
    values += [v for _, v in ts.extensions]
    for block in ts.recipients:
        values += [block.status, block.remote_mta or "", block.diagnostic_code or ""]
        values += [v for _, v in block.extensions]
    return values


_INNER_IP_IN_TEXT = re.compile(r"(?<![0-9])10\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9])")


class RewritePropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_leaky_part())
    def test_no_inner_name_leaks(self, case: tuple[TrackingStatus, list[str]]) -> None:
        ts, secrets = case
        out = _HIDE_ALL.part(ts)
        self.assertEqual(out.original_envelope_id, ENVID)
        for value in all_values(out):
            lowered = value.lower()
            self.assertNotIn("corp.example.com", lowered)
            self.assertNotIn(".arpa", lowered)
            for secret in secrets:
                if secret[0].isdigit():
                    self.assertIsNone(
                        re.search(rf"(?<![0-9.]){re.escape(secret)}(?![0-9])", value)
                    )
                else:
                    self.assertNotIn(secret.lower(), lowered)
        # Rewriting what is already hidden changes nothing.
        self.assertEqual(_HIDE_ALL.part(out), out)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=80))
    def test_never_crashes_on_free_text(self, text: str) -> None:
        ts = part(
            recipient(diagnostic_code=text, status=text, remote_mta=text, final_recipient=text),
            reporting_mta=text,
            extensions=(("X-Any", text),),
        )
        out = _HIDE_ALL.part(ts)
        self.assertEqual(len(out.recipients), 1)
        if not re.search(r"[0-9A-Za-z]", text):
            self.assertIs(out, ts)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_punctuated_text(), min_size=1, max_size=6), _SECRET, _SECRET)
    def test_no_matched_token_left_in_free_text(
        self, texts: list[str], hop: str, domain: str
    ) -> None:
        """Review M1: no token a rule matches survives in any free-text field, "@" or not.

        Nor a percent-hack hop in a recipient field (re-review item 3), where
        the domain, without ``addresses``, stays.
        """
        it = iter(texts * 6)
        address = f"rfc822; <jdoe%{hop}@{domain}>"
        ts = part(
            recipient(
                final_recipient=address,
                original_recipient=address,
                status="4.4.1 (" + next(it) + ")",
                diagnostic_code="smtp; " + next(it),
                remote_mta="x-local; " + next(it),
                extensions=(("X-Ext", next(it)),),
            ),
            received_from_mta="x-local; " + next(it),
            extensions=(("X-Queue", next(it)),),
        )
        out = _FREE_TEXT_RULES.part(ts)
        self.assertEqual(out.recipients[0].final_recipient, f"rfc822; <jdoe%example.com@{domain}>")
        self.assertEqual(out.recipients[0].original_recipient, out.recipients[0].final_recipient)
        for value in _free_text_values(out):
            self.assertNotIn("corp.example.com", value.lower(), value)
            self.assertNotIn(".arpa", value.lower(), value)
            self.assertIsNone(_INNER_IP_IN_TEXT.search(value), value)
        self.assertEqual(_FREE_TEXT_RULES.part(out), out)


# Review M5: the needles only make free-text rewriting faster, never different.
_GLOB_RULES = [
    Rewriter([Rule("*.corp.example.com", "example.com"), Rule("10.*", "example.com")]),
    Rewriter([Rule("mx?.corp.example.com", "a.example"), Rule("[10.0.0.*]", "b.example")]),
    Rewriter([Rule("smtp*.example3.*", "example2.com"), Rule("fd00::*", "v6.example")]),
    Rewriter([Rule("*.corp.example.com", "a.example"), Rule("fd00::5", "b.example")]),
    Rewriter([Rule("mx1.corp.example.com", "a.example"), Rule("10.0.0.5", "b.example")]),
]
_PIECES = st.sampled_from(
    [
        "mx1.corp.example.com",
        "MX7.CORP.EXAMPLE.COM.",
        "smtp1.example3.com",
        "10.0.0.5",
        "10.9",
        "fd00::5",
        "FD00:0:0::0005",
        "10.0.0.005",
        "64:ff9b::a00:5",
        "::ffff:a00:5",
        "::FFFF:10.0.0.7",
        "[IPv6:fd00::6]",
        "corp.example.com",
        "_backup",
        "42",
        "5.0.0.10.in-addr.arpa",
        "5.0.0.10.IN-ADDR.ARPA",
        nibbles("fd00::5"),
        nibbles("fd00::6"),
        "queue.",
        "\u212a",  # KELVIN SIGN: folds to "k" in Unicode, never in a token
        "x",
        "550",
        "-",
        ".",
        ":",
        "_",
    ]
)
_PUNCT = st.sampled_from(["", " ", "@", "/", "=", "[", "]", "(", ")", "<", ">", '"', ",", ";"])


class NeedleTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from(_GLOB_RULES),
        st.lists(st.tuples(_PUNCT, _PIECES), max_size=12).map(
            lambda pairs: "".join(p + q for p, q in pairs)
        ),
    )
    def test_fast_path_equals_looking_at_every_token(self, rw: Rewriter, text: str) -> None:
        self.assertEqual(rw._text(text), rw._every_token(text))
        # And again, with what the first call remembered.
        self.assertEqual(rw._text(text), rw._every_token(text))

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_GLOB_RULES), st.text(max_size=60))
    def test_fast_path_equals_on_any_text(self, rw: Rewriter, text: str) -> None:
        self.assertEqual(rw._text(text), rw._every_token(text))

    def test_which_rules_have_needles(self) -> None:
        self.assertIsNotNone(HIDE_CORP._needles)
        self.assertIsNone(Rewriter([Rule(r"re:mx\d", "example.com")])._needles)
        self.assertIsNone(Rewriter([Rule("*", "example.com")])._needles)
        self.assertIsNone(Rewriter()._needles)

    def test_memo_is_bounded(self) -> None:
        from mtqpgw import rewrite

        rw = Rewriter([Rule("*.corp.example.com", "example.com")])
        text = " ".join(f"h{i}.corp.example.com" for i in range(rewrite._MEMO_SIZE + 10))
        self.assertEqual(rw._text(text), " ".join(["example.com"] * (rewrite._MEMO_SIZE + 10)))
        self.assertLessEqual(len(rw._memo), rewrite._MEMO_SIZE)
        long_word = "a" * 300 + ".corp.example.com"
        rw._text(long_word)
        self.assertNotIn(long_word, rw._memo)
