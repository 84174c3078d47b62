"""Document-affinity routing for `beacon serve`: requests over the same documents go to the replica
that already holds their memory.

The ingress calls `BeaconServer.answer(req, documents=[ids], ...)` by handle; Ray Serve hands each
such call to `DocumentAffinityRouter.choose_replicas`, which ranks the live replicas for the
request's document list by rendezvous (highest-random-weight) hashing: every replica gets the score
hash(replica id, documents) and the highest score is the preferred replica. The same documents
always prefer the same replica while it lives; when a replica goes or comes, only the document
lists that preferred it (or now prefer the new one) move. Ranks, tried in order by Serve (the
least-loaded replica of a rank that has room wins):

    1. the preferred replica, unless it is busy (`busy_at` requests ongoing) or does not answer;
    2. the other replicas that are not busy;
    3. every replica (each one's own bounds answer 429 if it is really full).

A call without documents (`/health`) gets rank 3 alone: the least-loaded replica. A call with
`skip_replicas=[ids]` (`/health?replicas=all`, which asks every replica once) gets the replicas not
in the list first, then every replica: one that answers from the list means all have answered.

Serve imports this module by path (serve_config.ROUTER, the deployment's `request_router_class`)
and ships it, pickled by value, to every process that holds a handle to the deployment: it imports
only the standard library and Ray.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

ROUTE_KWARG = "documents"  # the keyword argument of the handle call that carries the document ids
SKIP_KWARG = "skip_replicas"  # the keyword of a health call that names the replicas already heard


def rendezvous_order(documents: Sequence[str], replica_ids: Sequence[str]) -> list[str]:
    """`replica_ids`, the most preferred for this document list first (highest random weight hashing).

    The list is the key in its order: [A, B] and [B, A] are different memories (the last document
    is read closest to the prompt), so they may prefer different replicas.
    """
    key = json.dumps(list(documents))  # unambiguous whatever characters the ids hold

    def score(replica_id: str) -> bytes:
        return hashlib.blake2b(f"{replica_id}\n{key}".encode(), digest_size=8).digest()

    return sorted(replica_ids, key=score, reverse=True)


class DocumentAffinityRouter(RequestRouter):
    """Routes a call with `documents=[ids]` to the replica those documents hash to, unless it is busy.

    No `FIFOMixin`: with it a replica found for one request may be handed to whichever request is
    oldest, which would break the affinity; without it each routing attempt fulfils its own request.
    """

    def initialize_state(self, busy_at: int = 0) -> None:
        """`busy_at`: ongoing requests at which a replica counts as busy for affinity (0: Serve's
        `max_ongoing_requests`). `beacon serve` sets the batcher's running + waiting bound, one
        below `max_ongoing_requests` (that spare slot lets the replica answer its own 429)."""
        self.busy_at = busy_at

    def _busy(self, replica: RunningReplica, queue_len: int | None) -> bool:
        return queue_len is not None and queue_len >= (self.busy_at or replica.max_ongoing_requests)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ranks of replicas, most preferred first (see the module's docstring)."""
        kwargs = {} if pending_request is None else pending_request.kwargs
        skip = kwargs.get(SKIP_KWARG)
        if skip is not None:  # /health?replicas=all: a replica not heard yet, if one has room
            rest = [r for r in candidate_replicas if r.replica_id.unique_id not in skip]
            return [rest, candidate_replicas] if rest else [candidate_replicas]
        documents = kwargs.get(ROUTE_KWARG)
        if not documents or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        preferred, *others = (by_id[i] for i in rendezvous_order(documents, list(by_id)))
        # The preferred replica's queue length from the router's cache; asked now if the cache has
        # none (it forgets an entry after ~10 s without traffic) or says busy: the cache counts an
        # answer until its completion message reaches this process, which can be after the client
        # has its answer and sent the next request, so a cached "busy" would move a list that
        # should stay. None: it did not answer (gone).
        queue_len = self._replica_queue_len_cache.get(preferred.replica_id)
        if queue_len is None or self._busy(preferred, queue_len):
            ((_, queue_len),) = await self._probe_queue_lens([preferred], 0)
        ranks = [] if queue_len is None or self._busy(preferred, queue_len) else [[preferred]]
        idle = [r for r in others if not self._busy(r, self._replica_queue_len_cache.get(r.replica_id))]
        if idle:
            ranks.append(idle)
        ranks.append(candidate_replicas)
        return ranks
