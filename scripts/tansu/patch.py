#!/usr/bin/env python3
"""Applies coupond's two fixes to a copy of tansu-storage 0.6.0's source.

1. service.rs, ChannelRequestService::serve: the storage actor's loop ended
   (`?`) on the first request that failed, or whose requester had gone, or
   panicked; from then on the broker accepted connections but answered
   nothing. Each request's failure now stays with that request.
2. lite.rs, idempotent_message_check: a producer whose epoch row is missing
   (seen after a broker restart) panicked with "more or less than one row";
   it now gets UNKNOWN_PRODUCER_ID, on which clients re-initialise their
   producer id, as the Kafka protocol intends.

Usage: patch.py <tansu-storage source dir>. Fails loudly if the source does
not look as expected, rather than building something half-patched.
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1])


def replace(rel, old, new):
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
print("tansu-storage patched")
