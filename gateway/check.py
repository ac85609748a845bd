#!/usr/bin/env python3
"""Checks the HTTP/JSON gateway against a real coupond, stdlib only:

    check.py GATEWAY_URL ADMIN_TOKEN [EVENT_ID]
    e.g. check.py http://127.0.0.1:8080 "$COUPOND_ADMIN_TOKEN"

EVENT_ID (default gw-<unix time>-<pid>) is the event it creates.

/healthz; Preload through POST /coupons/preload (401 without a token and with
a wrong one: the server answers UNAUTHENTICATED for both); Issue to 200
distinct users, half through POST /coupons/issue and half through
POST /v1/events/{id}/issuances, all ISSUED with distinct codes; a repeat is
ALREADY_ISSUED with the same coupon and a retry under the same requestId
ISSUED with it; bad fields are HTTP 400 with a google.rpc.BadRequest naming
the field; GetIssuance turns FINALIZED for every user (404 for a user holding
nothing); GetEvent's counts; ListEvents; IssueStream (newline-delimited JSON).
Prints "gateway check: OK" at the end; exits 1 with a message on the first
difference.
"""

import concurrent.futures
import datetime
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

TOTAL = 300
USERS = 200
FINALIZE_DEADLINE_S = 60
# More than the 256 KiB Go's HTTP/1.1 server keeps of an unread body.
STREAM_LINES = 5000


class Failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failed(what)


def call(base, method, path, body=None, token=None, raw=None):
    """Returns (HTTP status, parsed JSON body). Never raises for HTTP errors."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        parsed = json.loads(text) if raw is None else text
    except ValueError:
        raise Failed(f"{method} {path}: HTTP {status}, body is not JSON: {text[:300]!r}")
    return status, parsed


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def field_violations(body):
    """The fields named by the google.rpc.BadRequest details of an error body."""
    fields = []
    for d in body.get("details", []):
        if d.get("@type") == "type.googleapis.com/google.rpc.BadRequest":
            fields += [v.get("field") for v in d.get("fieldViolations", [])]
    return fields


def check(base, token, event):
    base = base.rstrip("/")

    # Health, backed by coupond's grpc.health.v1.
    status, body = call(base, "GET", "/healthz")
    expect(status == 200 and body.get("status") == "SERVING", f"/healthz: {status} {body}")

    now = datetime.datetime.now(datetime.timezone.utc)
    preload = {
        "eventId": event,
        "name": "gateway check",
        "totalCount": TOTAL,
        "policies": [{"discountType": "DISCOUNT_TYPE_PERCENT", "discountValue": "10", "weight": 1}],
        "startsAt": rfc3339(now - datetime.timedelta(minutes=1)),
        "endsAt": rfc3339(now + datetime.timedelta(hours=1)),
    }

    # Credentials: UNAUTHENTICATED (401) without a token and with a wrong one.
    status, body = call(base, "POST", "/coupons/preload", preload)
    expect(status == 401 and body.get("code") == 16, f"preload without a token: {status} {body}")
    status, body = call(base, "POST", "/coupons/preload", preload, token="wrong-" + token)
    expect(status == 401 and body.get("code") == 16, f"preload with a wrong token: {status} {body}")

    # A malformed Preload: 400 naming the field, nothing written.
    status, body = call(base, "POST", "/coupons/preload", dict(preload, totalCount=0), token=token)
    expect(status == 400 and "total_count" in field_violations(body),
           f"preload with totalCount 0: want 400 naming total_count, got {status} {body}")

    status, body = call(base, "POST", "/coupons/preload", preload, token=token)
    expect(status == 200, f"preload: {status} {body}")
    expect(body.get("eventId") == event and body.get("state") == "EVENT_STATE_LIVE"
           and body.get("countsPerPolicy") == [TOTAL], f"preload answer: {body}")
    print(f"preloaded {event}: {TOTAL} coupons via POST /coupons/preload in {body.get('totalMs')} ms")

    # 200 distinct users, half on each route.
    def issue(i):
        user, rid = f"user-{i:03d}", f"req-{i:03d}"
        if i % 2 == 0:
            path, req = "/coupons/issue", {"eventId": event, "userId": user, "requestId": rid}
        else:
            path, req = f"/v1/events/{event}/issuances", {"userId": user, "requestId": rid}
        return (i, path, req) + call(base, "POST", path, req)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        issued = list(pool.map(issue, range(USERS)))
    codes = {}
    for i, path, req, status, body in issued:
        expect(status == 200, f"issue user-{i:03d} via {path}: {status} {body}")
        expect(body.get("result") == "ISSUE_RESULT_ISSUED" and body.get("requestId") == req["requestId"],
               f"issue user-{i:03d} via {path}: {body}")
        code = (body.get("coupon") or {}).get("code")
        expect(code, f"issue user-{i:03d}: no coupon code: {body}")
        codes[f"user-{i:03d}"] = code
    expect(len(set(codes.values())) == USERS, f"codes are not distinct: {len(set(codes.values()))} of {USERS}")
    print(f"issued {USERS} distinct coupons ({USERS // 2} via POST /coupons/issue, "
          f"{USERS // 2} via POST /v1/events/{{id}}/issuances) in {time.monotonic() - started:.2f} s")

    # What a gateway team would type, with what it really answered.
    i, path, req, status, body = issued[1]
    curl = (f"curl -sS -X POST {shlex.quote(base + path)} -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(req, separators=(',', ':')))}")
    print("curl example:\n  " + curl)
    print("  -> HTTP 200 " + json.dumps(body, separators=(",", ":")))

    # A repeat (another request id, the other route): ALREADY_ISSUED, same coupon.
    status, body = call(base, "POST", f"/v1/events/{event}/issuances", {"userId": "user-000", "requestId": "again"})
    expect(status == 200 and body.get("result") == "ISSUE_RESULT_ALREADY_ISSUED"
           and body["coupon"]["code"] == codes["user-000"], f"repeat for user-000: {status} {body}")
    # A retry under the same request id: ISSUED, same coupon.
    status, body = call(base, "POST", "/coupons/issue", {"eventId": event, "userId": "user-001", "requestId": "req-001"})
    expect(status == 200 and body.get("result") == "ISSUE_RESULT_ISSUED"
           and body["coupon"]["code"] == codes["user-001"], f"retry for user-001: {status} {body}")

    # Bad fields: HTTP 400, the gRPC status JSON with a BadRequest naming the field.
    status, body = call(base, "POST", "/coupons/issue", {"eventId": event, "userId": ""})
    expect(status == 400 and body.get("code") == 3 and field_violations(body) == ["user_id"],
           f"empty userId: want 400 with a BadRequest naming user_id, got {status} {body}")
    print("bad request example: HTTP 400 " + json.dumps(body, separators=(",", ":")))
    status, body = call(base, "POST", "/v1/events/bad%21id/issuances", {"userId": "u"})
    expect(status == 400 and field_violations(body) == ["event_id"],
           f"event id with '!': want 400 with a BadRequest naming event_id, got {status} {body}")
    # A body that is not JSON: 400 from the gateway itself.
    status, body = call(base, "POST", "/coupons/issue", raw=b"{not json")
    expect(status == 400, f"a body that is not JSON: want 400, got {status} {body}")
    status, body = call(base, "GET", f"/v1/events/{event}/issuances/nobody")
    expect(status == 404 and body.get("code") == 5, f"GetIssuance for a user holding nothing: {status} {body}")

    # IssueStream: newline-delimited JSON both ways, one answer per request, in order.
    lines = [{"eventId": event, "userId": "stream-1", "requestId": "s1"},
             {"eventId": event, "userId": "", "requestId": "s2"},
             {"eventId": event, "userId": "user-002", "requestId": "s3"}]
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode()
    status, text = call(base, "POST", "/v1/issuances:stream", raw=raw)
    answers = [json.loads(x).get("result", {}) for x in text.splitlines() if x.strip()]
    expect(status == 200 and [a.get("result") for a in answers] ==
           ["ISSUE_RESULT_ISSUED", "ISSUE_RESULT_INVALID", "ISSUE_RESULT_ALREADY_ISSUED"]
           and [a.get("requestId") for a in answers] == ["s1", "s2", "s3"],
           f"IssueStream: {status} {text[:1000]}")
    expect(answers[2]["coupon"]["code"] == codes["user-002"], f"IssueStream repeat: {answers[2]}")
    codes["stream-1"] = answers[0]["coupon"]["code"]
    expect(len(set(codes.values())) == len(codes), "the streamed coupon's code is another user's")
    # A long stream (more than Go's server keeps of an unread body once the
    # answer starts): every request answered, in order.
    many = [{"eventId": event, "userId": f"user-{i % USERS:03d}", "requestId": f"long-{i:05d}"}
            for i in range(STREAM_LINES)]
    raw = "".join(json.dumps(x) + "\n" for x in many).encode()
    status, text = call(base, "POST", "/v1/issuances:stream", raw=raw)
    answers = [json.loads(x).get("result", {}) for x in text.splitlines() if x.strip()]
    expect(status == 200 and len(answers) == STREAM_LINES
           and [a.get("requestId") for a in answers] == [m["requestId"] for m in many]
           and all(a.get("result") == "ISSUE_RESULT_ALREADY_ISSUED" for a in answers),
           f"IssueStream of {STREAM_LINES} requests ({len(raw)} bytes): {status}, {len(answers)} answers")
    print(f"IssueStream: {STREAM_LINES} requests ({len(raw) // 1024} KiB), {len(answers)} answers in order")

    # A user id with '/', ':' and '?': issued by body, looked up by path.
    odd = "a/b:c?d"
    status, body = call(base, "POST", "/coupons/issue", {"eventId": event, "userId": odd, "requestId": "odd"})
    expect(status == 200 and body.get("result") == "ISSUE_RESULT_ISSUED", f"issue {odd!r}: {status} {body}")
    codes[odd] = body["coupon"]["code"]

    # GetIssuance: every user's coupon turns FINALIZED (recorded in PostgreSQL).
    started = time.monotonic()
    pending = dict(codes)
    while pending:
        for user, code in list(pending.items()):
            status, body = call(base, "GET", f"/v1/events/{event}/issuances/{quote(user, safe='')}")
            expect(status == 200 and body["coupon"]["code"] == code and body.get("userId") == user,
                   f"GetIssuance {user}: {status} {body}")
            if body.get("state") == "ISSUANCE_STATE_FINALIZED":
                del pending[user]
            else:
                expect(body.get("state") == "ISSUANCE_STATE_PENDING", f"GetIssuance {user}: {body}")
        if pending:
            expect(time.monotonic() - started < FINALIZE_DEADLINE_S,
                   f"{len(pending)} issuances not FINALIZED after {FINALIZE_DEADLINE_S} s, e.g. {next(iter(pending))}")
            time.sleep(0.2)
    print(f"GetIssuance: all {len(codes)} FINALIZED after {time.monotonic() - started:.2f} s")

    # GetEvent's counts (admin token), unpopulated fields present.
    status, body = call(base, "GET", f"/v1/events/{event}")
    expect(status == 401, f"GetEvent without a token: want 401, got {status} {body}")
    status, ev = call(base, "GET", f"/v1/events/{event}", token=token)
    n = len(codes)
    want = {"eventId": event, "totalCount": TOTAL, "issuedCount": n, "remainingCount": TOTAL - n,
            "finalizedCount": n, "preloadedCount": TOTAL, "conflictedCount": 0,
            "state": "EVENT_STATE_LIVE", "paused": False, "offline": False, "shards": 1, "codePrefix": ""}
    got = {k: ev.get(k, "<absent>") for k in want}
    expect(status == 200 and got == want, f"GetEvent: want {want}, got {status} {got}")

    # ListEvents: the event is there (pages followed).
    token_page, found = "", False
    for _ in range(100):
        status, page = call(base, "GET", f"/v1/events?pageSize=100&pageToken={token_page}", token=token)
        expect(status == 200, f"ListEvents: {status} {page}")
        found |= any(e.get("eventId") == event for e in page.get("events", []))
        token_page = page.get("nextPageToken", "")
        if found or not token_page:
            break
    expect(found, f"ListEvents does not list {event}")

    # Controls: pause (holders keep their coupon, newcomers hear PAUSED),
    # resume, extend, close (newcomers hear ENDED); none without a token.
    status, body = call(base, "POST", f"/v1/events/{event}:pause", {"reason": "check"})
    expect(status == 401, f"pause without a token: want 401, got {status} {body}")
    def answer(user):
        status, body = call(base, "POST", f"/v1/events/{event}/issuances", {"userId": user, "requestId": "ctl"})
        expect(status == 200, f"issue {user}: {status} {body}")
        return body.get("result"), (body.get("coupon") or {}).get("code")
    for action, body, newcomer in [
        ("pause", {"reason": "check"}, "ISSUE_RESULT_PAUSED"),
        ("resume", {"reason": "check"}, "ISSUE_RESULT_ISSUED"),
        ("extend", {"reason": "check", "endsAt": rfc3339(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))},
         "ISSUE_RESULT_ISSUED"),
        ("close", {"reason": "check"}, "ISSUE_RESULT_ENDED"),
    ]:
        status, reply = call(base, "POST", f"/v1/events/{event}:{action}", body, token=token)
        expect(status == 200, f"{action}: {status} {reply}")
        result, _ = answer(f"newcomer-{action}")
        expect(result == newcomer, f"after {action}, a newcomer: want {newcomer}, got {result}")
        result, code = answer("user-000")
        expect(result == "ISSUE_RESULT_ALREADY_ISSUED" and code == codes["user-000"],
               f"after {action}, a holder: {result} {code}")
    print("controls: pause, resume, extend, close over HTTP; holders kept their coupon")

    print("gateway check: OK")


def main():
    if len(sys.argv) not in (3, 4):
        print("usage: check.py GATEWAY_URL ADMIN_TOKEN [EVENT_ID]", file=sys.stderr)
        return 2
    event = sys.argv[3] if len(sys.argv) == 4 else f"gw-{int(time.time())}-{os.getpid()}"
    try:
        check(sys.argv[1], sys.argv[2], event)
    except Failed as err:
        print(f"gateway check: FAILED: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"gateway check: FAILED: cannot reach the gateway at {sys.argv[1]}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
