#!/usr/bin/env python3
"""Applies coupond's fixes to copies of tansu-storage's and tansu-broker's
0.6.0 sources.

tansu-storage:

1. service.rs, ChannelRequestService::serve: the storage actor's loop ended
   (`?`) on the first request that failed, or whose requester had gone, or
   panicked; from then on the broker accepted connections but answered
   nothing. Each request's failure now stays with that request.
2. lite.rs, idempotent_message_check: a producer whose epoch row is missing
   (seen after a broker restart) panicked with "more or less than one row";
   it now gets UNKNOWN_PRODUCER_ID, on which clients re-initialise their
   producer id, as the Kafka protocol intends.

tansu-broker, the consumer group coordinator (group/administrator.rs):
3. A member that stopped heartbeating was dropped from the group, but the
   group kept its generation and its assignments, so nobody rejoined: the
   dead member's partitions (all of them, if it led the group) were never
   consumed again. Expiring a member now starts a new generation without a
   leader, as Kafka's coordinator does, and heartbeats check for expired
   members before answering, so the survivors learn of it at once
   (REBALANCE_IN_PROGRESS) and rejoin.
4. Rejoining counts as contact: a live member waiting in a rebalance for a
   dead leader to expire is not itself expired for not heartbeating.
5. A leader that left while the group was forming stayed its leader, so
   the group waited forever for a sync from a member that was gone.
6. A leader rejoining a formed group (as librdkafka does when a subscribed
   topic appears or changes) got the old generation back and its new
   assignment was ignored: a group formed while its topic did not exist yet
   (a broker that lost its data) never consumed it. It now starts a new
   generation, as Kafka does.

Usage: patch.py <tansu-storage source dir> <tansu-broker source dir>. Fails
loudly if the source does not look as expected, rather than building
something half-patched.
"""
import pathlib
import sys

storage_root = pathlib.Path(sys.argv[1])
broker_root = pathlib.Path(sys.argv[2])


def replace(rel, old, new, root=storage_root):
    p = root / rel
    s = p.read_text()
    if new in s:
        return
    if s.count(old) != 1:
        sys.exit(f"patch.py: expected exactly one match in {rel}")
    p.write_text(s.replace(old, new))


replace(
    "src/service.rs",
    """                Some((request, tx)) = req.recv() => {
                    self.inner
                    .serve(ctx.clone(), request)
                    .await
                    .and_then(|response| {
                        tx.send(response).map_err(|_unsent| Error::UnableToSend)
                    })?
                }""",
    """                Some((request, tx)) = req.recv() => {
                    use futures::FutureExt as _;
                    match std::panic::AssertUnwindSafe(self.inner.serve(ctx.clone(), request))
                        .catch_unwind()
                        .await
                    {
                        Ok(Ok(response)) => {
                            // The requester may have gone; that is its business.
                            _ = tx.send(response);
                        }
                        Ok(Err(err)) => error!(?err, "storage request failed"),
                        Err(_) => error!("storage request panicked"),
                    }
                }""",
)

replace(
    "src/lite.rs",
    """            let row = connection
                .query_one(
                    "producer_select_for_update.sql",""",
    """            let Some(row) = connection
                .query(
                    "producer_select_for_update.sql",""",
)
replace(
    "src/lite.rs",
    """                        deflated.producer_epoch,
                        ?err
                    )
                })?;

            let sequence = row.get::<i32>(0)""",
    """                        deflated.producer_epoch,
                        ?err
                    )
                })?
                .next()
                .await?
            else {
                return Err(Error::Api(ErrorCode::UnknownProducerId));
            };

            let sequence = row.get::<i32>(0)""",
)

ADMIN = "src/coordinator/group/administrator.rs"

replace(
    ADMIN,
    """            Self::Forming(mut inner) => {
                _ = inner.missed_heartbeat(group_id, now);
                Self::Forming(inner)
            }""",
    """            Self::Forming(mut inner) => {
                if inner.missed_heartbeat(group_id, now) {
                    // coupond: the survivors must join the group again.
                    inner.generation_id += 1;
                    _ = inner.state.leader.take();
                }
                Self::Forming(inner)
            }""",
    broker_root,
)
replace(
    ADMIN,
    """                    info!("missed heartbeat for {group_id} in {}", inner.generation_id);

                    Self::Forming(Inner {
                        session_timeout_ms: inner.session_timeout_ms,
                        rebalance_timeout_ms: inner.rebalance_timeout_ms,
                        members: inner.members,
                        generation_id: inner.generation_id,""",
    """                    info!("missed heartbeat for {group_id} in {}", inner.generation_id);

                    Self::Forming(Inner {
                        session_timeout_ms: inner.session_timeout_ms,
                        rebalance_timeout_ms: inner.rebalance_timeout_ms,
                        members: inner.members,
                        // coupond: a new generation, so the survivors rejoin.
                        generation_id: inner.generation_id + 1,""",
    broker_root,
)
replace(
    ADMIN,
    """            let (mut wrapper, body) = wrapper
                .heartbeat(now, group_id, generation_id, member_id, group_instance_id)
                .await;

            if group_instance_id.is_none() {
                wrapper = wrapper.missed_heartbeat(group_id, now);
            }
""",
    """            // coupond: expire silent members before answering, so that this
            // heartbeat already reports the rebalance they cause.
            let wrapper = if group_instance_id.is_none() {
                wrapper.missed_heartbeat(group_id, now)
            } else {
                wrapper
            };

            let (wrapper, body) = wrapper
                .heartbeat(now, group_id, generation_id, member_id, group_instance_id)
                .await;
""",
    broker_root,
)
replace(
    ADMIN,
    """        if let Some(member) = self.members.get_mut(&member_id) {
            if member.join_response.metadata == protocol.metadata {""",
    """        if let Some(member) = self.members.get_mut(&member_id) {
            // coupond: rejoining is contact.
            member.last_contact = Some(now);
            if member.join_response.metadata == protocol.metadata {""",
    broker_root,
)
replace(
    ADMIN,
    """            member.error_code == error_code
        }) {
            self.generation_id += 1;
        }""",
    """            member.error_code == error_code
        }) {
            self.generation_id += 1;
            // coupond: a leader that left leads no more.
            if self
                .state
                .leader
                .as_ref()
                .is_some_and(|leader| !self.members.contains_key(leader))
            {
                _ = self.state.leader.take();
            }
        }""",
    broker_root,
)
replace(
    ADMIN,
    """            }) if *metadata == protocol.metadata => {
                debug!(
                    member_metadata = "existing",
                    member_id,
                    generation_id = self.generation_id
                );

                let state: Wrapper<O> = self.into();
""",
    """            }) if *metadata == protocol.metadata => {
                debug!(
                    member_metadata = "existing",
                    member_id,
                    generation_id = self.generation_id
                );

                // coupond: the leader rejoins to assign anew; that takes a
                // new generation, which the other members then join.
                let state: Wrapper<O> = if self.state.leader == member_id {
                    Inner {
                        generation_id: self.generation_id + 1,
                        session_timeout_ms: self.session_timeout_ms,
                        rebalance_timeout_ms: self.rebalance_timeout_ms,
                        members: self.members,
                        state: Forming {
                            protocol_type: Some(self.state.protocol_type),
                            protocol_name: Some(self.state.protocol_name),
                            leader: Some(self.state.leader),
                        },
                        storage: self.storage,
                        skip_assignment: self.skip_assignment,
                        inception: self.inception,
                    }
                    .into()
                } else {
                    self.into()
                };
""",
    broker_root,
)
print("tansu-storage and tansu-broker patched")
