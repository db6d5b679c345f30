#!/usr/bin/env python3
"""OpenAPI conformance of the served API: signs a fresh user up on it (register, the mailed code
from the local outbox, verify, login), then runs schemathesis with `--checks all` as that user, so
the protected routes are exercised past their token check (the tokens are in
infra/schemathesis.toml's headers). `infra/conformance.py API_URL`.

No check is excluded. The only failures let through are single answers recognised exactly in
infra/conformance_hooks.py (each with its reason: the local router's own answers, and two business
rules no schema can state); which statuses count as a documented refusal is in
infra/schemathesis.toml.
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

API = sys.argv[1].rstrip("/")
OUTBOX = os.environ["OUTBOX_PATH"]
PASSWORD = "conformance horse battery staple"

def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(API + path, data=data, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def signed_up(email):
    status, body = call("POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD})
    assert status == 202, (status, body)
    code = None
    for _ in range(50):
        with open(OUTBOX) as f:
            mails = [json.loads(line) for line in f if line.strip()]
        code = next((m["code"] for m in reversed(mails) if m.get("to") == email and m.get("code")), None)
        if code:
            break
        time.sleep(0.1)
    assert code, "no verification mail in the outbox"
    status, body = call("POST", "/api/v1/auth/verify", {"email": email, "verification_code": code})
    assert status == 200, (status, body)


def login(email):
    status, body = call("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, (status, body)
    return body


def signed_in_token():
    email = f"conformance-{uuid.uuid4().hex}@example.com"
    signed_up(email)
    return login(email)["access_token"]


def totp(secret, at):
    """RFC 6238 (HMAC-SHA-1, 6 digits, 30 s), written here from the RFC: an independent
    authenticator for the operator's second factor."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 15
    return "%06d" % ((struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000)


def operator_token():
    """An operator: the admin role granted as `make admin` grants it, two-factor on, signed in
    with it."""
    email = f"conformance-admin-{uuid.uuid4().hex}@example.com"
    signed_up(email)
    subprocess.run(["cargo", "run", "-q", "--bin", "ops", "--", "grant-admin", email], check=True, stdout=subprocess.DEVNULL)
    token = login(email)["access_token"]
    status, setup = call("POST", "/api/v1/auth/mfa/totp/setup", token=token)
    assert status == 200, (status, setup)
    status, body = call("POST", "/api/v1/auth/mfa/totp/enable", {"code": totp(setup["secret"], time.time())}, token=token)
    assert status == 200, (status, body)
    pending = login(email)
    # The next step's code: the one that turned two-factor on does not sign in.
    status, body = call("POST", "/api/v1/auth/mfa/verify", {"mfa_token": pending["mfa_token"], "code": totp(setup["secret"], time.time() + 30)})
    assert status == 200, (status, body)
    return body["access_token"]


def main():
    # The run's user, and another one whose token ends sessions: the stateful phase chains the
    # session list into ending a listed session, which with the run's own token would end the
    # run's session (and every later call would be a 401). As another user it is the 404 of a
    # session that is not the caller's.
    # And an operator for the admin routes that only look, or stop a bot (the kill switch is set
    # with the run's own token: refused, so the run never halts its own trading).
    tokens = {
        "CONFORMANCE_TOKEN": signed_in_token(),
        "CONFORMANCE_OTHER_TOKEN": signed_in_token(),
        "CONFORMANCE_ADMIN_TOKEN": operator_token(),
    }
    command = [
        "schemathesis", "run", "docs/openapi.yaml",
        "--url", API,
        "--checks", "all",
        "--max-examples", os.environ.get("CONFORMANCE_EXAMPLES", "50"),
        # One worker: with two, hypothesis parses strategy sources in both threads at once, which
        # trips CPython 3.11's AST constructor ("recursion depth mismatch"): a crash of the tool,
        # not an answer of the API.
        "--workers", "1",
        "--seed", os.environ.get("CONFORMANCE_SEED", "20261125"),
        "--request-timeout", "30",
        "--suppress-health-check", "too_slow",
    ]
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="conformance_hooks", PYTHONPATH=here, **tokens)
    command[1:1] = ["--config-file", os.path.join(here, "schemathesis.toml")]
    sys.exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
