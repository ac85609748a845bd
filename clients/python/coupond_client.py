"""A small coupond client for Python gateways, over stubs generated from
proto/ by grpcio-tools (see generate.sh). Run as a program, it checks a
running server against what the proto promises and exits non-zero on any
difference:  python coupond_client.py HOST:PORT ADMIN_TOKEN
"""

import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/gen")
from coupon.v1 import admin_pb2, admin_pb2_grpc, common_pb2  # noqa: E402
from coupon.v1 import issuer_pb2, issuer_pb2_grpc  # noqa: E402


class CouponClient:
    """Issue, IssueStream and GetIssuance; Preload with the admin token."""

    def __init__(self, target, admin_token, timeout=10.0):
        self.channel = grpc.insecure_channel(target)
        self.issuer = issuer_pb2_grpc.CouponIssuerStub(self.channel)
        self.admin = admin_pb2_grpc.CouponAdminStub(self.channel)
        self.auth = [("authorization", f"Bearer {admin_token}")]
        self.timeout = timeout

    def preload(self, event_id, total, policies):
        now = datetime.now(timezone.utc)
        req = admin_pb2.PreloadRequest(
            event_id=event_id,
            name="python client check",
            total_count=total,
            policies=policies,
            starts_at=_ts(now - timedelta(minutes=1)),
            ends_at=_ts(now + timedelta(hours=1)),
        )
        return self.admin.Preload(req, metadata=self.auth, timeout=60)

    def issue(self, event_id, user_id, request_id=""):
        req = issuer_pb2.IssueRequest(event_id=event_id, user_id=user_id, request_id=request_id)
        return self.issuer.Issue(req, timeout=self.timeout)

    def issue_stream(self, requests):
        return list(self.issuer.IssueStream(iter(requests), timeout=self.timeout))

    def issuance(self, event_id, user_id):
        req = issuer_pb2.GetIssuanceRequest(event_id=event_id, user_id=user_id)
        return self.issuer.GetIssuance(req, timeout=self.timeout)


def field_violations(err):
    """The google.rpc.BadRequest field violations of an INVALID_ARGUMENT."""
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def _ts(t):
    ts = Timestamp()
    ts.FromDatetime(t)
    return ts


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def check(target, admin_token):
    c = CouponClient(target, admin_token)
    event = f"py-{uuid.uuid4().hex[:12]}"
    percent = common_pb2.DiscountPolicy(
        discount_type=common_pb2.DISCOUNT_TYPE_PERCENT, discount_value=10, weight=1
    )
    live = c.preload(event, 10, [percent])
    expect(live.state == admin_pb2.EVENT_STATE_LIVE, f"preload state {live.state}")

    codes = {}
    for user in ("u1", "u2", "u3"):
        r = c.issue(event, user, f"req-{user}")
        expect(r.result == issuer_pb2.ISSUE_RESULT_ISSUED, f"{user}: {r}")
        expect(r.request_id == f"req-{user}" and r.coupon.code, f"{user}: {r}")
        codes[user] = r.coupon.code

    stream = [issuer_pb2.IssueRequest(event_id=event, user_id=u, request_id=u) for u in ("s1", "s2", "s3")]
    answers = c.issue_stream(stream)
    expect([a.request_id for a in answers] == ["s1", "s2", "s3"], "stream answers in order")
    for a in answers:
        expect(a.result == issuer_pb2.ISSUE_RESULT_ISSUED, f"stream: {a}")
        codes[a.request_id] = a.coupon.code
    expect(len(set(codes.values())) == 6, "no code twice")

    again = c.issue(event, "u1", "another-request")
    expect(again.result == issuer_pb2.ISSUE_RESULT_ALREADY_ISSUED, f"repeat: {again}")
    expect(again.coupon.code == codes["u1"], "a repeat returns the same coupon")
    retry = c.issue(event, "u2", "req-u2")
    expect(retry.result == issuer_pb2.ISSUE_RESULT_ISSUED, "a retry under the same request id is ISSUED")
    expect(retry.coupon.code == codes["u2"], "a retry returns the same coupon")

    try:
        c.issue(event, "")
        raise AssertionError("an empty user_id was accepted")
    except grpc.RpcError as err:
        expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"status {err.code()}")
        expect([f for f, _ in field_violations(err)] == ["user_id"], f"violations {field_violations(err)}")

    deadline = time.monotonic() + 30
    while True:
        got = c.issuance(event, "u1")
        expect(got.coupon.code == codes["u1"], f"GetIssuance: {got}")
        if got.state == issuer_pb2.ISSUANCE_STATE_FINALIZED:
            break
        expect(got.state == issuer_pb2.ISSUANCE_STATE_PENDING, f"state {got.state}")
        expect(time.monotonic() < deadline, "not finalized within 30 s")
        time.sleep(0.1)
    try:
        c.issuance(event, "nobody")
        raise AssertionError("GetIssuance of a user without a coupon answered")
    except grpc.RpcError as err:
        expect(err.code() == grpc.StatusCode.NOT_FOUND, f"status {err.code()}")
    print(f"python client: event {event}: 6 issued (3 unary, 3 streamed), repeat, retry, BadRequest, GetIssuance FINALIZED: OK")


if __name__ == "__main__":
    check(sys.argv[1], sys.argv[2])
