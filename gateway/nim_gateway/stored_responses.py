"""Requests about a stored OpenAI Response go to the replica that holds it.

`GET`/`DELETE /v1/responses/{id}` are sent to that replica; a `POST /v1/responses` with
`previous_response_id` prefers it over what routing would pick (any other replica could only
answer "not found"). Where it is comes from the ResponseAffinity this gateway pod learned from
the creations it forwarded; an id it did not see created (another gateway pod forwarded it, or
this one restarted since) is looked for by asking the replicas, all at once, for it; when none
holds it, the answer is remembered for a moment (RecentMisses), so an unknown id asked for again
and again does not ask every replica every time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from starlette.responses import JSONResponse, Response

from nim_gateway.backends import Endpoint
from nim_gateway.errors import error_response
from nim_gateway.proxy import BACKEND_HEADER, DROPPED_RESPONSE_HEADERS, Answered, Proxy
from nim_gateway.response_affinity import (
    RecentMisses,
    ResponseAffinity,
    StoredAt,
    asks_to_store,
    previous_response_id,
    stored_response_id,
)

__all__ = ["Placement", "StoredResponses"]

log = logging.getLogger(__name__)


class _Unanswered(enum.Enum):
    NOT_HELD = "the replica answered 404"
    NO_ANSWER = "an error, a timeout, or an answer without a model"


NOT_HELD = _Unanswered.NOT_HELD
NO_ANSWER = _Unanswered.NO_ANSWER


@dataclass(frozen=True)
class Placement:
    """How a POST /v1/responses is forwarded: to which replica first, and what to learn."""

    prefer: str | None
    answered: Answered | None


class StoredResponses:
    def __init__(
        self, proxy: Proxy, affinity: ResponseAffinity, misses: RecentMisses | None = None
    ) -> None:
        self.proxy = proxy
        self.affinity = affinity
        self.misses = misses if misses is not None else RecentMisses(0, 0.0)
        settings = proxy.settings
        # Asking a replica for a response is a lookup in its memory: quick, or not at all.
        self._timeout = aiohttp.ClientTimeout(
            total=settings.scrape_timeout + settings.connect_timeout,
            sock_connect=settings.connect_timeout,
        )

    # --- POST /v1/responses ----------------------------------------------------------------

    async def place(
        self,
        body: Mapping[str, Any],
        model: str,
        headers: Mapping[str, str],
        allowed: Callable[[str], bool],
    ) -> Placement | JSONResponse:
        """Where a creation goes first (the holder of its `previous_response_id`), and a hook
        that records where the new response is stored; or the answer when the key may not
        read the conversation it continues."""
        prefer: str | None = None
        previous = previous_response_id(body)
        if previous is not None:
            stored = await self.locate(previous, headers, model)
            if stored is not None:
                if not allowed(stored.model):
                    return response_not_found(previous, "previous_response_id")
                prefer = stored.url
        if not asks_to_store(body):
            return Placement(prefer, None)

        def answered(endpoint: Endpoint, status: int, answer: Mapping[str, str]) -> None:
            response_id = stored_response_id(answer)
            if 200 <= status < 300 and response_id is not None:
                self.affinity.record(response_id, endpoint.url, model)
                self.misses.discard(response_id)

        return Placement(prefer, answered)

    # --- GET / DELETE /v1/responses/{id} ---------------------------------------------------

    async def serve(
        self,
        method: str,
        response_id: str,
        query: str,
        headers: Mapping[str, str],
        allowed: Callable[[str], bool],
    ) -> Response:
        stored = await self.locate(response_id, headers)
        # A response of a model the key does not open is as unknown as one never stored.
        if stored is None or not allowed(stored.model):
            return response_not_found(response_id, "response_id")
        endpoint = self._endpoint(stored.url)
        if endpoint is None:
            self.affinity.forget(response_id)
            return error_response(
                404,
                f"Response with id '{response_id}' was stored by a replica that is gone "
                "(scaled down, moved or replaced): the response is lost.",
                "invalid_request_error",
                param="response_id",
                code="response_not_found",
            )
        path = f"/v1/responses/{quote(response_id, safe='')}" + (f"?{query}" if query else "")
        answer = await self._exchange(method, endpoint, path, headers)
        if answer is None:
            return error_response(
                503,
                f"The replica holding response '{response_id}' cannot be reached; retry shortly.",
                "service_unavailable",
                code="no_ready_replica",
                retry_after=self.proxy.settings.retry_after,
            )
        if answer.status_code == 404 or (method == "DELETE" and answer.status_code == 200):
            self.affinity.forget(response_id)
        return answer

    # --- where a response is ---------------------------------------------------------------

    async def locate(
        self, response_id: str, headers: Mapping[str, str], model: str | None = None
    ) -> StoredAt | None:
        """The replica holding `response_id`: as learned, else the one (serving `model`, when
        given) that answers for it."""
        known = self.affinity.get(response_id)
        if known is not None:
            return known
        if self.misses.recent(response_id, model, time.monotonic()):
            return None
        urls = sorted(
            {
                e.url
                for e in self.proxy.table.endpoints()
                if e.healthy is not False and (model is None or model in e.model_ids())
            }
        )
        found = await asyncio.gather(*(self._probe(url, response_id, headers) for url in urls))
        for url, stored_model in zip(urls, found, strict=True):
            if isinstance(stored_model, str):
                self.affinity.record(response_id, url, stored_model)
                return StoredAt(url, stored_model)
        # Remembered only when every replica asked answered no: one that could not be asked
        # may hold it, and is asked again next time.
        if urls and all(answer is NOT_HELD for answer in found):
            self.misses.add(response_id, model, time.monotonic())
        return None

    async def _probe(
        self, url: str, response_id: str, headers: Mapping[str, str]
    ) -> str | _Unanswered:
        """The model of `response_id` if the replica at `url` holds it; else whether it said
        so (NOT_HELD) or could not be asked (NO_ANSWER)."""
        # Without the client's Accept-Encoding: this answer is read here, not passed on.
        plain = {k: v for k, v in headers.items() if k.lower() != "accept-encoding"}
        try:
            async with self.proxy.session.get(
                f"{url}/v1/responses/{quote(response_id, safe='')}",
                headers=plain,
                timeout=self._timeout,
            ) as answer:
                if answer.status == 404:
                    return NOT_HELD
                if answer.status != 200:
                    return NO_ANSWER
                body = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.info("could not ask %s for response %s: %s", url, response_id, error)
            return NO_ANSWER
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else NO_ANSWER

    def _endpoint(self, url: str) -> Endpoint | None:
        return next((e for e in self.proxy.table.endpoints() if e.url == url), None)

    async def _exchange(
        self, method: str, endpoint: Endpoint, path: str, headers: Mapping[str, str]
    ) -> Response | None:
        """The replica's answer, as it sent it; None when it could not be reached."""
        try:
            async with self.proxy.session.request(
                method,
                endpoint.url + path,
                headers=dict(headers),
                timeout=self._timeout,
                skip_auto_headers=("Accept-Encoding",),
            ) as upstream:
                content = await upstream.read()
                status = upstream.status
                raw_headers = [
                    (name.lower(), value)
                    for name, value in upstream.raw_headers
                    if name.decode("latin-1").lower()
                    not in {*DROPPED_RESPONSE_HEADERS, "content-length"}
                ]
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("replica %s did not answer %s %s: %s", endpoint.url, method, path, error)
            return None
        response = Response(content, status_code=status)  # sets the content-length
        response.raw_headers.extend(raw_headers)
        if self.proxy.settings.backend_header:
            response.raw_headers.append((BACKEND_HEADER.encode(), endpoint.url.encode()))
        return response


def response_not_found(response_id: str, param: str) -> JSONResponse:
    """As nim-serve says it, so a client sees one error whether the gateway or a replica
    answered."""
    return error_response(
        404,
        f"Response with id '{response_id}' not found: it was never stored (store: false), has "
        "been evicted or deleted, or no replica holds it.",
        "invalid_request_error",
        param=param,
        code="response_not_found",
    )
