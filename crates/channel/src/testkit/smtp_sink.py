#!/usr/bin/env python3
"""A real SMTP server for tests, run by the testkit's `SmtpSink` (needs `pip install aiosmtpd`).

    python3 smtp_sink.py --dir DIR [--port 0] [--reject ADDR]... [--defer ADDR]...
                         [--auth USER:PASSWORD]

Listens on 127.0.0.1 (port 0 picks a free one) and prints `READY <port>` on stdout once
it accepts connections. Each message it accepts becomes two files in DIR, numbered in
arrival order: `N.eml` (the raw message as received) and then `N.json` (the envelope and
a parse of the message by Python's `email` package, an independent MIME decoder for the
tests to compare against). RCPT for a `--reject` address answers
`550 5.1.1 mailbox unavailable`, for a `--defer` address `451 4.3.0 try later`. With
`--auth`, clients must log in (AUTH PLAIN/LOGIN, allowed without TLS here) as that user.

Exits with status 3 and a message on stderr when aiosmtpd is missing.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import sys
import warnings

# aiosmtpd warns about AUTH without TLS, which is what `--auth` asks for on loopback.
warnings.filterwarnings("ignore")

try:
    from aiosmtpd.smtp import SMTP, AuthResult
except ImportError:
    print(
        "smtp_sink.py: the Python package aiosmtpd is missing; "
        "install it with `python3 -m pip install aiosmtpd`",
        file=sys.stderr,
    )
    sys.exit(3)


class Sink:
    def __init__(self, directory, reject, defer):
        self.directory = directory
        self.reject = {a.lower() for a in reject}
        self.defer = {a.lower() for a in defer}
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        if address.lower() in self.defer:
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        number = self.count
        raw = envelope.original_content
        base = os.path.join(self.directory, str(number))
        with open(base + ".eml", "wb") as f:
            f.write(raw)
        summary = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "parsed": parse(raw),
        }
        # Written last and renamed into place, so a reader that sees N.json sees it whole.
        with open(base + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump(summary, f, ensure_ascii=False, indent=2)
        os.replace(base + ".json.tmp", base + ".json")
        return f"250 2.0.0 Ok: queued as {number}"


def parse(raw):
    message = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for part in message.walk():
        entry = {"content_type": part.get_content_type()}
        if not part.is_multipart():
            entry["charset"] = part.get_content_charset()
            entry["content"] = part.get_content()
        parts.append(entry)
    return {
        "headers": {name.lower(): str(value) for name, value in message.items()},
        "content_type": message.get_content_type(),
        "parts": parts,
        "defects": [repr(d) for d in message.defects],
    }


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            auth_data is not None
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # `handled=False` makes aiosmtpd send its 535 reply itself on failure.
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reject", action="append", default=[])
    parser.add_argument("--defer", action="append", default=[])
    parser.add_argument("--auth")
    args = parser.parse_args()

    handler = Sink(args.dir, args.reject, args.defer)
    options = {"enable_SMTPUTF8": True}
    if args.auth:
        user, _, password = args.auth.partition(":")
        options.update(
            authenticator=authenticator(user, password),
            auth_required=True,
            auth_require_tls=False,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", **options), "127.0.0.1", args.port
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
