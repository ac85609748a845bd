// Command couponclient is a small coupond client for Go gateways, over
// stubs generated from proto/ (see generate.sh). Run, it checks a running
// server against what the proto promises and exits non-zero on any
// difference:  go run . HOST:PORT ADMIN_TOKEN
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	couponv1 "coupond/gen/go/coupon/v1"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Client wraps the generated stubs: Issue, IssueStream, GetIssuance, and
// Preload with the admin token.
type Client struct {
	conn       *grpc.ClientConn
	Issuer     couponv1.CouponIssuerClient
	Admin      couponv1.CouponAdminClient
	adminToken string
}

func Dial(target, adminToken string) (*Client, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Client{conn, couponv1.NewCouponIssuerClient(conn), couponv1.NewCouponAdminClient(conn), adminToken}, nil
}

func (c *Client) asAdmin(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.adminToken)
}

// Preload creates an event of total coupons, open from a minute ago for an hour.
func (c *Client) Preload(ctx context.Context, event string, total uint32, policies []*couponv1.DiscountPolicy) (*couponv1.PreloadResponse, error) {
	now := time.Now()
	return c.Admin.Preload(c.asAdmin(ctx), &couponv1.PreloadRequest{
		EventId:    event,
		Name:       "go client check",
		TotalCount: total,
		Policies:   policies,
		StartsAt:   timestamppb.New(now.Add(-time.Minute)),
		EndsAt:     timestamppb.New(now.Add(time.Hour)),
	})
}

// Issue asks for one user's coupon; requestID makes a retry safe.
func (c *Client) Issue(ctx context.Context, event, user, requestID string) (*couponv1.IssueResponse, error) {
	return c.Issuer.Issue(ctx, &couponv1.IssueRequest{EventId: event, UserId: user, RequestId: requestID})
}

// IssueAll sends every request over one IssueStream; answers come in order.
func (c *Client) IssueAll(ctx context.Context, reqs []*couponv1.IssueRequest) ([]*couponv1.IssueResponse, error) {
	stream, err := c.Issuer.IssueStream(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if err := stream.Send(r); err != nil {
			return nil, err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	out := make([]*couponv1.IssueResponse, 0, len(reqs))
	for range reqs {
		r, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// FieldViolations returns the google.rpc.BadRequest fields of an INVALID_ARGUMENT.
func FieldViolations(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func check(target, adminToken string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := Dial(target, adminToken)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	event := fmt.Sprintf("go-%d", time.Now().UnixNano())
	policy := &couponv1.DiscountPolicy{DiscountType: couponv1.DiscountType_DISCOUNT_TYPE_AMOUNT, DiscountValue: 500, Weight: 1}
	live, err := c.Preload(ctx, event, 10, []*couponv1.DiscountPolicy{policy})
	if err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	if live.GetState() != couponv1.EventState_EVENT_STATE_LIVE {
		return fmt.Errorf("preload state %v", live.GetState())
	}
	held := map[string]string{}
	for _, u := range []string{"u1", "u2", "u3"} {
		r, err := c.Issue(ctx, event, u, "req-"+u)
		if err != nil || r.GetResult() != couponv1.IssueResult_ISSUE_RESULT_ISSUED || r.GetRequestId() != "req-"+u {
			return fmt.Errorf("issue %s: %v %v", u, r, err)
		}
		held[u] = r.GetCoupon().GetCode()
	}
	var reqs []*couponv1.IssueRequest
	for _, u := range []string{"s1", "s2", "s3"} {
		reqs = append(reqs, &couponv1.IssueRequest{EventId: event, UserId: u, RequestId: u})
	}
	answers, err := c.IssueAll(ctx, reqs)
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	for i, a := range answers {
		if a.GetRequestId() != reqs[i].GetRequestId() || a.GetResult() != couponv1.IssueResult_ISSUE_RESULT_ISSUED {
			return fmt.Errorf("stream answer %d: %v", i, a)
		}
		held[a.GetRequestId()] = a.GetCoupon().GetCode()
	}
	distinct := map[string]bool{}
	for _, code := range held {
		distinct[code] = true
	}
	if len(distinct) != 6 {
		return fmt.Errorf("codes not distinct: %v", held)
	}
	again, err := c.Issue(ctx, event, "u1", "another-request")
	if err != nil || again.GetResult() != couponv1.IssueResult_ISSUE_RESULT_ALREADY_ISSUED || again.GetCoupon().GetCode() != held["u1"] {
		return fmt.Errorf("repeat: %v %v", again, err)
	}
	retry, err := c.Issue(ctx, event, "u2", "req-u2")
	if err != nil || retry.GetResult() != couponv1.IssueResult_ISSUE_RESULT_ISSUED || retry.GetCoupon().GetCode() != held["u2"] {
		return fmt.Errorf("retry under the same request id: %v %v", retry, err)
	}
	_, err = c.Issue(ctx, event, "", "")
	if status.Code(err) != codes.InvalidArgument {
		return fmt.Errorf("empty user_id: %v", err)
	}
	if f := FieldViolations(err); len(f) != 1 || f[0] != "user_id" {
		return fmt.Errorf("BadRequest field violations %v", f)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := c.Issuer.GetIssuance(ctx, &couponv1.GetIssuanceRequest{EventId: event, UserId: "u1"})
		if err != nil || got.GetCoupon().GetCode() != held["u1"] {
			return fmt.Errorf("GetIssuance: %v %v", got, err)
		}
		if got.GetState() == couponv1.IssuanceState_ISSUANCE_STATE_FINALIZED {
			break
		}
		if got.GetState() != couponv1.IssuanceState_ISSUANCE_STATE_PENDING || time.Now().After(deadline) {
			return fmt.Errorf("GetIssuance state %v", got.GetState())
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err = c.Issuer.GetIssuance(ctx, &couponv1.GetIssuanceRequest{EventId: event, UserId: "nobody"})
	if status.Code(err) != codes.NotFound {
		return fmt.Errorf("GetIssuance of nobody: %v", err)
	}
	fmt.Printf("go client: event %s: 6 issued (3 unary, 3 streamed), repeat, retry, BadRequest, GetIssuance FINALIZED: OK\n", event)
	return nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: couponclient HOST:PORT ADMIN_TOKEN")
		os.Exit(2)
	}
	if err := check(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "go client:", err)
		os.Exit(1)
	}
}
