//! Issuing coupons and looking up issuances.

use tracing::instrument;

use crate::config::Durability;
use crate::domain::{
    CouponError, EventId, IssuanceRecord, IssuanceState, IssueCommand, IssueOutcome, IssuedCoupon,
    UserId,
};
use crate::kafka::Publisher;
use crate::service::batcher::Batcher;
use crate::service::stored_answers::StoredAnswers;
use crate::store::redis::Verdict;
use crate::store::{PgStore, RedisStore};
use crate::supervisor::{Kind, Spawner};

/// A user's coupon with its state, as GetIssuance reports it.
#[derive(Debug, Clone)]
pub struct IssuanceView {
    pub coupon: IssuedCoupon,
    pub request_id: String,
    pub state: IssuanceState,
}

/// An issue outcome, and whether an ISSUED one is durable (in Kafka).
#[derive(Debug, Clone)]
pub struct IssueAnswer {
    pub outcome: IssueOutcome,
    pub durable: bool,
}

/// The issue path: Redis script (batched), then Kafka.
pub struct IssuerService {
    batcher: Batcher,
    redis: RedisStore,
    pg: PgStore,
    /// What Redis cannot decide (an event it does not hold), PostgreSQL does.
    stored: StoredAnswers,
    publisher: Publisher,
    durability: Durability,
    /// Starts background publishes (async durability), which the drain
    /// awaits before the producer flush.
    spawner: Spawner,
}

impl IssuerService {
    pub fn new(
        batcher: Batcher,
        redis: RedisStore,
        pg: PgStore,
        publisher: Publisher,
        durability: Durability,
        spawner: Spawner,
    ) -> Self {
        Self {
            batcher,
            redis,
            stored: StoredAnswers::new(pg.clone()),
            pg,
            publisher,
            durability,
            spawner,
        }
    }

    /// Issues a coupon to the command's user. In ack mode an ISSUED outcome
    /// is answered after Kafka acknowledged the CouponIssued message
    /// (durable), or, when it did not within the publish timeout, answered
    /// as not yet durable; in async mode at once (not yet durable). A failed
    /// publish does not undo the coupon: the issuance stays in the pending
    /// set, republished until it is finalized.
    #[instrument(skip_all, fields(event_id = %cmd.event_id, user_id = %cmd.user_id, request_id = %cmd.request_id.as_str()))]
    pub async fn issue(&self, cmd: IssueCommand) -> Result<IssueAnswer, CouponError> {
        let cmd = cmd.with_own_request_id(&mut rand::rng());
        let (cmd, verdict) = self.batcher.issue(cmd).await?;
        let outcome = match verdict {
            Verdict::Decided(o) => o,
            // PostgreSQL's answers need no publish: an ISSUED from there is
            // recorded already.
            v => {
                let outcome = self.stored.answer(&cmd, v == Verdict::Offline).await?;
                let durable = matches!(outcome, IssueOutcome::Issued(_));
                return Ok(IssueAnswer { outcome, durable });
            }
        };
        let IssueOutcome::Issued(coupon) = &outcome else {
            return Ok(IssueAnswer {
                outcome,
                durable: false,
            });
        };
        let record = IssuanceRecord {
            event_id: cmd.event_id,
            user_id: cmd.user_id,
            coupon: coupon.clone(),
            request_id: cmd.request_id.into_string(),
        };
        let durable = match self.durability {
            Durability::Ack => {
                let durable = publish_logged(&self.publisher, &record).await;
                if !durable {
                    crate::metrics::answered_not_durable();
                }
                durable
            }
            Durability::Async => {
                let p = self.publisher.clone();
                self.spawner.spawn(Kind::Publish, async move {
                    publish_logged(&p, &record).await;
                });
                false
            }
        };
        Ok(IssueAnswer { outcome, durable })
    }

    /// The coupon `user` holds for `event`, from Redis, or from PostgreSQL
    /// when Redis no longer has it.
    #[instrument(skip_all, fields(event_id = %event, user_id = %user), err(level = "debug"))]
    pub async fn issuance(
        &self,
        event: &EventId,
        user: &UserId,
    ) -> Result<IssuanceView, CouponError> {
        let shards = self
            .pg
            .shards(event)
            .await
            .map_err(|e| CouponError::unavailable("reading the event's shard count", e))?;
        let rec = self
            .redis
            .issuance(event, shards, user)
            .await
            .map_err(|e| CouponError::unavailable("reading the issuance from redis", e))?;
        if let Some(r) = rec {
            return Ok(IssuanceView {
                coupon: r.coupon,
                request_id: r.request_id,
                state: r.state,
            });
        }
        match self
            .pg
            .issuance(event, user)
            .await
            .map_err(|e| CouponError::unavailable("reading the issuance from postgres", e))?
        {
            Some((coupon, request_id)) => Ok(IssuanceView {
                coupon,
                request_id,
                state: IssuanceState::Finalized,
            }),
            None => Err(CouponError::IssuanceNotFound {
                event_id: event.to_string(),
                user_id: user.to_string(),
            }),
        }
    }
}

/// Publishes; true when Kafka acknowledged.
async fn publish_logged(p: &Publisher, record: &IssuanceRecord) -> bool {
    let started = std::time::Instant::now();
    let published = p.publish(record).await;
    crate::metrics::published(started.elapsed(), published.is_ok());
    let Err(e) = published else {
        return true;
    };
    {
        // The coupon stands: the record is in the pending set and is
        // republished until PostgreSQL has it.
        tracing::error!(
            error = %e,
            event_id = %record.event_id,
            user_id = %record.user_id,
            code = %record.coupon.code,
            "publishing coupon-issued failed; issuance left pending"
        );
    }
    false
}
