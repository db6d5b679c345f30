#!/usr/bin/env python3
"""Writes the sample API Gateway HTTP API (payload 2.0) events in events/.

The events are committed; rerun this after adding a route. Each file is named after the function
that serves it. Bodies are realistic requests; replayed against a fresh stack most of them answer
with a 4xx (no such user, no token), which is what `make test` expects of a replay: any answer
that is not a 5xx and not an invocation error.
"""
import base64
import json
import pathlib

EVENTS = pathlib.Path(__file__).resolve().parent.parent / "events"
SAMPLE_TOKEN = "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSIsImtpZCI6InNhbXBsZSJ9.e30.c2lnbmF0dXJl"


def event(method, path, body=None, headers=None, route_path=None, path_parameters=None, query=None):
    h = {"accept": "application/json", "user-agent": "curl/8.5.0", "x-forwarded-for": "203.0.113.7", "host": "api.example.com"}
    if body is not None:
        h["content-type"] = "application/json"
    h.update(headers or {})
    route = f"{method} {route_path or path}"
    e = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": "",
        "headers": h,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": route,
            "stage": "$default",
            "time": "24/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1795478400000,
        },
        "isBase64Encoded": False,
    }
    if path_parameters:
        e["pathParameters"] = path_parameters
    if query:
        e["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
        e["queryStringParameters"] = query
    if body is not None:
        e["body"] = json.dumps(body)
    return e


def non_utf8(e):
    """The same request with a base64 body that is not UTF-8 (a client sending Latin-1, say)."""
    e = json.loads(json.dumps(e))
    e["isBase64Encoded"] = True
    e["body"] = base64.b64encode(b'{"email": "caf\xe9@example.com", "password": "\xff\xfe"}').decode()
    return e


def bearer():
    return {"authorization": f"Bearer {SAMPLE_TOKEN}"}


SAMPLES = {
    "health": event("GET", "/api/v1/health"),
    "register": event("POST", "/api/v1/auth/register", {"email": "alice@example.com", "password": "correct horse battery staple", "username": "alice"}),
    "verify": event("POST", "/api/v1/auth/verify", {"email": "alice@example.com", "verification_code": "123456"}),
    "resend": event("POST", "/api/v1/auth/resend", {"email": "alice@example.com"}),
    "password-forgot": event("POST", "/api/v1/auth/password/forgot", {"email": "alice@example.com"}),
    "password-reset": event(
        "POST", "/api/v1/auth/password/reset", {"email": "alice@example.com", "code": "123456", "new_password": "a new long passphrase"}
    ),
    "password-change": event(
        "POST", "/api/v1/auth/password/change", {"current_password": "correct horse battery staple", "new_password": "a new long passphrase"}, bearer()
    ),
    "mfa-totp-setup": event("POST", "/api/v1/auth/mfa/totp/setup", headers=bearer()),
    "mfa-totp-enable": event("POST", "/api/v1/auth/mfa/totp/enable", {"code": "123456"}, bearer()),
    "mfa-totp-disable": event("POST", "/api/v1/auth/mfa/totp/disable", {"password": "correct horse battery staple", "code": "123456"}, bearer()),
    "mfa-verify": event("POST", "/api/v1/auth/mfa/verify", {"mfa_token": "A" * 43, "code": "123456"}),
    "sessions-list": event("GET", "/api/v1/auth/sessions", headers=bearer()),
    "session-delete": event(
        "DELETE",
        "/api/v1/auth/sessions/00000000-0000-0000-0000-000000000000",
        headers=bearer(),
        route_path="/api/v1/auth/sessions/{session_id}",
        path_parameters={"session_id": "00000000-0000-0000-0000-000000000000"},
    ),
    "me-delete": event("DELETE", "/api/v1/users/me", {"password": "correct horse battery staple"}, bearer()),
    "login": event("POST", "/api/v1/auth/login", {"email": "alice@example.com", "password": "correct horse battery staple"}),
    "refresh": event("POST", "/api/v1/auth/refresh", {"refresh_token": "rt1.00000000-0000-0000-0000-000000000000.00000000-0000-0000-0000-000000000000.1795478400000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    "logout": event("POST", "/api/v1/auth/logout", {"refresh_token": "rt1.00000000-0000-0000-0000-000000000000.00000000-0000-0000-0000-000000000000.1795478400000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "scope": "local"}),
    "me": event("GET", "/api/v1/users/me", headers=bearer()),
    "jwks": event("GET", "/.well-known/jwks.json"),
    "put-credentials": event("PUT", "/api/v1/exchange/credentials", {"exchange": "bitget", "api_key": "bg_0123456789abcdef", "api_secret": "0123456789abcdef0123456789abcdef", "passphrase": "passphrase", "demo": True}, bearer()),
    "delete-credentials": event("DELETE", "/api/v1/exchange/credentials", headers=bearer()),
    "account": event("GET", "/api/v1/account", headers=bearer()),
    "bot-start": event("POST", "/api/v1/bot/start", {"symbol": "BTCUSDT", "leverage": 5, "stop_loss_pct": "2", "take_profit_pct": "4", "trailing_stop_pct": "1.5", "max_position_notional": "5000"}, bearer()),
    "bot-stop": event("POST", "/api/v1/bot/stop", {}, bearer()),
    "bot-status": event("GET", "/api/v1/bot/status", headers=bearer()),
    "order-submit": event("POST", "/api/v1/order/submit", {"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.01"}, {**bearer(), "idempotency-key": "3f0c2a9e-order-1"}),
    "bot-signal-token": event("POST", "/api/v1/bot/signal-token", headers=bearer()),
    "position-close": event(
        "POST",
        "/api/v1/positions/BTCUSDT/close",
        headers=bearer(),
        route_path="/api/v1/positions/{symbol}/close",
        path_parameters={"symbol": "BTCUSDT"},
    ),
    "order-get": event(
        "GET",
        "/api/v1/orders/paper-tb0000000000000000000000000000",
        headers=bearer(),
        route_path="/api/v1/orders/{order_id}",
        path_parameters={"order_id": "paper-tb0000000000000000000000000000"},
    ),
    "order-cancel": event(
        "DELETE",
        "/api/v1/orders/paper-tb0000000000000000000000000000",
        headers=bearer(),
        route_path="/api/v1/orders/{order_id}",
        path_parameters={"order_id": "paper-tb0000000000000000000000000000"},
    ),
    "markets": event("GET", "/api/v1/markets"),
    "notifications-get": event("GET", "/api/v1/notifications", headers=bearer()),
    "notifications-put": event("PUT", "/api/v1/notifications", {"events": ["stop_loss", "take_profit", "liquidation"]}, bearer()),
    "notifications-telegram-delete": event("DELETE", "/api/v1/notifications/telegram", headers=bearer()),
    "telegram-link": event("POST", "/api/v1/notifications/telegram/link", headers=bearer()),
    "telegram-webhook": event(
        "POST",
        "/api/v1/telegram/webhook",
        {"update_id": 1, "message": {"message_id": 7, "chat": {"id": 42, "type": "private"}, "text": "/start " + "A" * 43}},
        {"x-telegram-bot-api-secret-token": "not-the-secret"},
    ),
    "admin-bots": event("GET", "/api/v1/admin/bots", headers=bearer(), query={"state": "running", "limit": "50"}),
    "admin-bot-stop": event(
        "POST",
        "/api/v1/admin/users/00000000-0000-0000-0000-000000000000/bot/stop",
        headers=bearer(),
        route_path="/api/v1/admin/users/{user_id}/bot/stop",
        path_parameters={"user_id": "00000000-0000-0000-0000-000000000000"},
    ),
    "admin-kill-switch-get": event("GET", "/api/v1/admin/kill-switch", headers=bearer()),
    "admin-kill-switch-set": event("PUT", "/api/v1/admin/kill-switch", {"enabled": True, "reason": "exchange incident"}, bearer()),
    "admin-audit": event("GET", "/api/v1/admin/audit", headers=bearer(), query={"limit": "50"}),
    "order-list": event("GET", "/api/v1/orders", headers=bearer(), query={"status": "open", "symbol": "BTCUSDT", "limit": "20"}),
    "fills": event("GET", "/api/v1/fills", headers=bearer(), query={"symbol": "BTCUSDT", "from": "2026-11-01T00:00:00Z", "limit": "50"}),
    "pnl": event("GET", "/api/v1/pnl", headers=bearer(), query={"from": "2026-11-01T00:00:00Z", "to": "2026-11-30T23:59:59Z", "interval": "day"}),
    "backtest": event(
        "POST",
        "/api/v1/backtest",
        {"strategy": {"kind": "ema_cross", "interval": "1m", "fast": 9, "slow": 21, "size": "0.01"},
         "symbol": "BTCUSDT", "interval": "1m", "from": "2026-11-23T00:00:00Z", "to": "2026-11-23T06:00:00Z"},
        headers=bearer(),
    ),
    "signal": event(
        "POST",
        "/api/v1/signals/" + "A" * 43,
        {"id": "tv-alert-1", "action": "buy", "size": "0.01"},
        route_path="/api/v1/signals/{token}",
        path_parameters={"token": "A" * 43},
    ),
}
# One JSON route also replays with a body that is not UTF-8: answered 400 `invalid_json`.
SAMPLES["login.non-utf8"] = non_utf8(SAMPLES["login"])

# The WebSocket API's events (API Gateway WebSocket proxy events).
def ws_event(route, kind, body=None, query=None):
    e = {
        "requestContext": {
            "routeKey": route, "eventType": kind, "messageDirection": "IN", "stage": "live",
            "connectedAt": 1764547200000, "requestTimeEpoch": 1764547200100, "requestId": "Lh3tdFQ-IAMFZ8A=",
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com", "connectionId": "Lhx3tdfTIAMCJsg=",
            "apiId": "abcdef1234", "identity": {"sourceIp": "203.0.113.7"},
        },
        "isBase64Encoded": False,
    }
    if query:
        e["queryStringParameters"] = query
        e["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    if body is not None:
        e["body"] = body
    return e

SAMPLES["ws-connect"] = ws_event("$connect", "CONNECT", query={"token": SAMPLE_TOKEN})
SAMPLES["ws-default"] = ws_event("$default", "MESSAGE", body='{"action":"ping"}')
SAMPLES["ws-disconnect"] = ws_event("$disconnect", "DISCONNECT")

# A batch of the table's stream as the event source mapping delivers it: a bot stopping.
def bot_image(state, version):
    return {
        "PK": {"S": "USER#00000000-0000-4000-8000-000000000000"}, "SK": {"S": "BOT"},
        "user_id": {"S": "00000000-0000-4000-8000-000000000000"}, "state": {"S": state}, "version": {"N": str(version)},
        "exchange": {"S": "paper"}, "updated_at": {"S": "2026-12-01T00:00:00.000Z"},
        "config": {"M": {"symbol": {"S": "BTCUSDT"}, "leverage": {"N": "5"}, "stop_loss_pct": {"S": "2"},
                         "take_profit_pct": {"NULL": True}, "trailing_stop_pct": {"NULL": True},
                         "max_position_notional": {"S": "5000"}, "margin_mode": {"S": "isolated"},
                         "strategy": {"M": {"kind": {"S": "manual"}}}}},
    }

SAMPLES["broadcast"] = {"Records": [{
    "eventID": "c4ca4238a0b923820dcc509a6f75849b", "eventName": "MODIFY", "eventVersion": "1.1",
    "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
    "dynamodb": {
        "Keys": {"PK": {"S": "USER#00000000-0000-4000-8000-000000000000"}, "SK": {"S": "BOT"}},
        "NewImage": bot_image("stopping", 8), "OldImage": bot_image("running", 7),
        "SequenceNumber": "111100000000000000000001", "SizeBytes": 420, "StreamViewType": "NEW_AND_OLD_IMAGES",
    },
    "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/trading-bot/stream/2026-12-01T00:00:00.000",
}]}

# What EventBridge Scheduler sends the guardian for one shard (the schedule's Input, verbatim).
SAMPLES["sweep.shard-3"] = {"shard": 3}

if __name__ == "__main__":
    EVENTS.mkdir(exist_ok=True)
    for name, sample in SAMPLES.items():
        (EVENTS / f"{name}.json").write_text(json.dumps(sample, indent=2) + "\n")
    print(f"wrote {len(SAMPLES)} events to {EVENTS}")
