package com.coupond.client;

import com.coupond.coupon.v1.CouponAdminGrpc;
import com.coupond.coupon.v1.CouponIssuerGrpc;
import com.coupond.coupon.v1.DiscountPolicy;
import com.coupond.coupon.v1.DiscountType;
import com.coupond.coupon.v1.EventState;
import com.coupond.coupon.v1.GetIssuanceRequest;
import com.coupond.coupon.v1.GetIssuanceResponse;
import com.coupond.coupon.v1.IssuanceState;
import com.coupond.coupon.v1.IssueRequest;
import com.coupond.coupon.v1.IssueResponse;
import com.coupond.coupon.v1.IssueResult;
import com.coupond.coupon.v1.PreloadRequest;
import com.coupond.coupon.v1.PreloadResponse;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Timestamp;
import com.google.rpc.BadRequest;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * A small coupond client for Java gateways, over grpc-java stubs generated from proto/ at build
 * time. Run, it checks a running server against what the proto promises and exits non-zero on
 * any difference: {@code CouponClient HOST:PORT ADMIN_TOKEN}.
 */
public final class CouponClient implements AutoCloseable {
  private final ManagedChannel channel;
  private final CouponIssuerGrpc.CouponIssuerBlockingStub issuer;
  private final CouponIssuerGrpc.CouponIssuerStub issuerAsync;
  private final CouponAdminGrpc.CouponAdminBlockingStub admin;

  public CouponClient(String target, String adminToken) {
    channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    issuer = CouponIssuerGrpc.newBlockingStub(channel);
    issuerAsync = CouponIssuerGrpc.newStub(channel);
    Metadata auth = new Metadata();
    auth.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + adminToken);
    admin = CouponAdminGrpc.newBlockingStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(auth));
  }

  public PreloadResponse preload(String eventId, int total, DiscountPolicy policy) {
    Instant now = Instant.now();
    return admin.withDeadlineAfter(60, TimeUnit.SECONDS).preload(PreloadRequest.newBuilder()
        .setEventId(eventId)
        .setName("java client check")
        .setTotalCount(total)
        .addPolicies(policy)
        .setStartsAt(ts(now.minusSeconds(60)))
        .setEndsAt(ts(now.plusSeconds(3600)))
        .build());
  }

  /** Asks for one user's coupon; the request id makes a retry safe. */
  public IssueResponse issue(String eventId, String userId, String requestId) {
    return issuer.withDeadlineAfter(10, TimeUnit.SECONDS).issue(IssueRequest.newBuilder()
        .setEventId(eventId).setUserId(userId).setRequestId(requestId).build());
  }

  /** Sends every request over one IssueStream; answers come in order. */
  public List<IssueResponse> issueAll(List<IssueRequest> requests) throws Exception {
    CompletableFuture<List<IssueResponse>> done = new CompletableFuture<>();
    List<IssueResponse> answers = new ArrayList<>();
    StreamObserver<IssueRequest> out = issuerAsync.withDeadlineAfter(10, TimeUnit.SECONDS)
        .issueStream(new StreamObserver<>() {
          @Override public void onNext(IssueResponse r) { answers.add(r); }
          @Override public void onError(Throwable t) { done.completeExceptionally(t); }
          @Override public void onCompleted() { done.complete(answers); }
        });
    requests.forEach(out::onNext);
    out.onCompleted();
    return done.get(10, TimeUnit.SECONDS);
  }

  public GetIssuanceResponse issuance(String eventId, String userId) {
    return issuer.withDeadlineAfter(10, TimeUnit.SECONDS).getIssuance(
        GetIssuanceRequest.newBuilder().setEventId(eventId).setUserId(userId).build());
  }

  /** The google.rpc.BadRequest field violations of an INVALID_ARGUMENT. */
  public static List<String> fieldViolations(StatusRuntimeException e) throws InvalidProtocolBufferException {
    List<String> fields = new ArrayList<>();
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status == null) {
      return fields;
    }
    for (com.google.protobuf.Any detail : status.getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        detail.unpack(BadRequest.class).getFieldViolationsList().forEach(v -> fields.add(v.getField()));
      }
    }
    return fields;
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
  }

  private static Timestamp ts(Instant t) {
    return Timestamp.newBuilder().setSeconds(t.getEpochSecond()).setNanos(t.getNano()).build();
  }

  private static void expect(boolean cond, String what) {
    if (!cond) {
      throw new AssertionError(what);
    }
  }

  private static StatusRuntimeException failure(Runnable call) {
    try {
      call.run();
    } catch (StatusRuntimeException e) {
      return e;
    }
    throw new AssertionError("the call succeeded");
  }

  static void check(String target, String adminToken) throws Exception {
    try (CouponClient c = new CouponClient(target, adminToken)) {
      String event = "java-" + Long.toString(System.nanoTime(), 36);
      DiscountPolicy policy = DiscountPolicy.newBuilder()
          .setDiscountType(DiscountType.DISCOUNT_TYPE_AMOUNT).setDiscountValue(1000).setWeight(1).build();
      PreloadResponse live = c.preload(event, 10, policy);
      expect(live.getState() == EventState.EVENT_STATE_LIVE, "preload state " + live.getState());

      Map<String, String> held = new HashMap<>();
      for (String u : List.of("u1", "u2", "u3")) {
        IssueResponse r = c.issue(event, u, "req-" + u);
        expect(r.getResult() == IssueResult.ISSUE_RESULT_ISSUED && r.getRequestId().equals("req-" + u), u + ": " + r);
        held.put(u, r.getCoupon().getCode());
      }
      List<IssueRequest> reqs = new ArrayList<>();
      for (String u : List.of("s1", "s2", "s3")) {
        reqs.add(IssueRequest.newBuilder().setEventId(event).setUserId(u).setRequestId(u).build());
      }
      List<IssueResponse> answers = c.issueAll(reqs);
      expect(answers.size() == 3, "three stream answers");
      for (int i = 0; i < 3; i++) {
        IssueResponse a = answers.get(i);
        expect(a.getRequestId().equals(reqs.get(i).getRequestId()), "stream answers in order");
        expect(a.getResult() == IssueResult.ISSUE_RESULT_ISSUED, "stream: " + a);
        held.put(a.getRequestId(), a.getCoupon().getCode());
      }
      expect(new HashSet<>(held.values()).size() == 6, "no code twice");

      IssueResponse again = c.issue(event, "u1", "another-request");
      expect(again.getResult() == IssueResult.ISSUE_RESULT_ALREADY_ISSUED, "repeat: " + again);
      expect(again.getCoupon().getCode().equals(held.get("u1")), "a repeat returns the same coupon");
      IssueResponse retry = c.issue(event, "u2", "req-u2");
      expect(retry.getResult() == IssueResult.ISSUE_RESULT_ISSUED
          && retry.getCoupon().getCode().equals(held.get("u2")), "retry: " + retry);

      StatusRuntimeException bad = failure(() -> c.issue(event, "", ""));
      expect(bad.getStatus().getCode() == Status.Code.INVALID_ARGUMENT, "status " + bad.getStatus());
      expect(fieldViolations(bad).equals(List.of("user_id")), "violations " + fieldViolations(bad));

      long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
      while (true) {
        GetIssuanceResponse got = c.issuance(event, "u1");
        expect(got.getCoupon().getCode().equals(held.get("u1")), "GetIssuance: " + got);
        if (got.getState() == IssuanceState.ISSUANCE_STATE_FINALIZED) {
          break;
        }
        expect(got.getState() == IssuanceState.ISSUANCE_STATE_PENDING && System.nanoTime() < until,
            "state " + got.getState());
        Thread.sleep(100);
      }
      StatusRuntimeException nobody = failure(() -> c.issuance(event, "nobody"));
      expect(nobody.getStatus().getCode() == Status.Code.NOT_FOUND, "GetIssuance of nobody: " + nobody.getStatus());
      System.out.println("java client: event " + event
          + ": 6 issued (3 unary, 3 streamed), repeat, retry, BadRequest, GetIssuance FINALIZED: OK");
    }
  }

  public static void main(String[] args) {
    try {
      check(args[0], args[1]);
    } catch (Throwable t) {
      System.err.println("java client: " + t);
      System.exit(1);
    }
  }
}
