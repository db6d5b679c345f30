"""Schemathesis hooks of `infra/conformance.py`. Each failure let through here is recognised
exactly, by its status and the body that proves where it comes from, never by route or check
alone.

From the local router (`cargo lambda watch`), which turns HTTP into Lambda events itself:
- a body that is not UTF-8 makes it answer its own 500 (`{"type": "https://httpstatuses.com/500"}`)
  before any function runs; API Gateway base64-encodes such a body instead, which the functions
  answer 400 `invalid_json` (replayed from `events/login.non-utf8.json`, tested in cargo test);
- a method the API does not declare is answered by the router's own 404 ("Default function
  disabled"); API Gateway HTTP APIs answer an undeclared route 404 too, without an Allow header.

Business rules no schema can state (refused with 400 by the contract):
- `weak_password` on register: a password from the list of most-used ones, or one that contains
  the email or username;
- `invalid_code` on verify: a well-formed code that is not the one mailed;
- `invalid_code` and `weak_password` on password reset, for the same two reasons;
- `weak_password` on password change; `invalid_code` on two-factor enable, disable and verify: a
  well-formed TOTP code that is not the authenticator's of now;
- `invalid_cursor` on the order, fill, admin bot and audit lists: a cursor string this service
  did not seal.
"""
import json

import schemathesis

ROUTER_500_TYPE = "https://httpstatuses.com/500"
ROUTER_404_TITLE = "Default function disabled"
UNSTATABLE_RULES = {
    "POST /api/v1/auth/register": {"weak_password"},
    "POST /api/v1/auth/verify": {"invalid_code"},
    "POST /api/v1/auth/password/reset": {"invalid_code", "weak_password"},
    "POST /api/v1/auth/password/change": {"weak_password"},
    "POST /api/v1/auth/mfa/totp/enable": {"invalid_code"},
    "POST /api/v1/auth/mfa/totp/disable": {"invalid_code"},
    "POST /api/v1/auth/mfa/verify": {"invalid_code"},
    # A cursor of the right shape that this service never sealed (for this caller and filters).
    "GET /api/v1/orders": {"invalid_cursor"},
    "GET /api/v1/fills": {"invalid_cursor"},
    "GET /api/v1/admin/bots": {"invalid_cursor"},
    "GET /api/v1/admin/audit": {"invalid_cursor"},
}


def _json(response):
    try:
        body = json.loads(response.content)
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _not_utf8(body):
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def _router_500_for_a_non_utf8_body(response):
    request_body = getattr(response.request, "body", None)
    return response.status_code == 500 and _not_utf8(request_body) and _json(response).get("type") == ROUTER_500_TYPE


def _router_404_for_an_undeclared_method(failure, response):
    return failure.code == "ST204" and response.status_code == 404 and _json(response).get("title") == ROUTER_404_TITLE


def _unstatable_business_rule(failure, case, response):
    rule = UNSTATABLE_RULES.get(f"{case.operation.method.upper()} {case.operation.path}")
    return failure.code == "ST202" and response.status_code == 400 and rule is not None and _json(response).get("code") in rule


@schemathesis.hook
def filter_failure(context, failure, case, response):
    return not (
        _router_500_for_a_non_utf8_body(response)
        or _router_404_for_an_undeclared_method(failure, response)
        or _unstatable_business_rule(failure, case, response)
    )
