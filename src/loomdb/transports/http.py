"""Sync frames over HTTP(S): each request is one ``POST {node}/api/v0/sync``.

The body is the request frame and the reply's body is the reply frame, both
``application/vnd.loomdb.sync``. Every exchange stands alone, so a late reply
cannot be mistaken for the next one; a time-out still drops the connection
(httpx closes a connection whose response was abandoned).

Errors of httpx never escape (rule 3 of :mod:`loomdb.transports.base`): a
refused or failed connection, TLS included, is ``UnreachableError``; a time-out
``TransportTimeoutError``; a 413 or an over-size reply ``FrameTooLargeError``;
any other status ``TransportError`` naming it.

With a token source, every request carries ``Authorization: Bearer <token>``;
a 401 is the node refusing it (rule 5 of :mod:`loomdb.transports.base`).
"""

from __future__ import annotations

import httpx

from loomdb.errors import (
    AuthError,
    FrameTooLargeError,
    TransportError,
    TransportTimeoutError,
    UnreachableError,
)
from loomdb.transports.auth import TokenSource, api_error, auth_error
from loomdb.transports.base import DEFAULT_MAX_FRAME, SerialChannel, TokenRefused, describe
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, sync_endpoint
from loomdb.transports.tls import Verify, verify_context

DEFAULT_CONNECT_TIMEOUT = 10.0
_ERROR_BODY_LIMIT = 64 * 1024  # enough for a JSON error; more is not read
_HEADERS = {
    "content-type": SYNC_MEDIA_TYPE,
    "accept": SYNC_MEDIA_TYPE,
    "accept-encoding": "identity",  # the limit is on the frame, not on a compressed body
}


class HttpChannel(SerialChannel):
    """A :class:`~loomdb.transports.base.RequestChannel` to a node's HTTP API.

    ``url`` is the node's base URL (``http://host:port`` or ``https://…``, as
    ``loomdb client --url`` takes). ``verify``: see :data:`loomdb.transports.tls.Verify`.
    ``transport`` replaces the network (``httpx.ASGITransport(app)`` in tests).
    ``token_source`` gives the bearer token to send (none: the request is anonymous).
    """

    def __init__(
        self,
        url: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        verify: Verify = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        token_source: TokenSource | None = None,
    ) -> None:
        super().__init__(url, max_frame, token_source)
        self._endpoint = sync_endpoint(url, websocket=False)
        self.url = url
        self._client = httpx.AsyncClient(
            verify=verify_context(verify) if self._endpoint.secure else True,
            timeout=httpx.Timeout(None, connect=connect_timeout),  # fail_after bounds the rest
            limits=httpx.Limits(max_connections=1),
            transport=transport,
            follow_redirects=False,  # the token goes to this node's URL and nowhere else
        )

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def _exchange(self, frame: bytes) -> bytes:
        token = await self._bearer()
        headers = _HEADERS if token is None else {**_HEADERS, "authorization": f"Bearer {token}"}
        try:
            async with self._client.stream(
                "POST", self._endpoint.url, content=frame, headers=headers
            ) as response:
                if response.status_code != 200:
                    raise await self._refusal(response)
                return await self._read_reply(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UnreachableError(f"cannot reach {self.url}: {describe(exc)}") from None
        except httpx.TimeoutException as exc:
            raise TransportTimeoutError(f"{self.url} timed out: {describe(exc)}") from None
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            raise TransportError(f"exchange with {self.url} failed: {describe(exc)}") from None

    async def _read_reply(self, response: httpx.Response) -> bytes:
        media_type = response.headers.get("content-type", "").partition(";")[0].strip()
        if media_type != SYNC_MEDIA_TYPE:
            raise UnreachableError(
                f"{self.url} is not a loomdb sync endpoint (it answered {media_type or 'no type'})"
            )
        if response.headers.get("content-encoding", "identity") != "identity":
            raise TransportError(f"{self.url} sent an encoded reply, which was not asked for")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_frame:
            raise _reply_too_large(int(declared), self._max_frame)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self._max_frame:
                raise _reply_too_large(len(body), self._max_frame)
        return bytes(body)

    async def _refusal(self, response: httpx.Response) -> Exception:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > _ERROR_BODY_LIMIT:
                break
        error = api_error(bytes(body[:_ERROR_BODY_LIMIT]))
        detail = f"{error[0]}: {error[1]}" if error else _start(body)
        status = response.status_code
        if status == 401:
            refusal = auth_error(*error) if error else AuthError(f"{self.url} answered 401")
            return TokenRefused(refusal)
        if status == 413:
            return FrameTooLargeError(f"{self.url} refused the request as too large: {detail}")
        if status == 404:
            return TransportError(
                f"{self.url} has no sync endpoint (404: {detail}); is it a loomdb node?"
            )
        return TransportError(f"{self.url} answered {status} {response.reason_phrase}: {detail}")


def _start(body: bytes | bytearray) -> str:
    """The start of a body that is not an API error, for a message."""
    return bytes(body[:200]).decode("utf-8", "replace").strip() or "no details"


def _reply_too_large(size: int, limit: int) -> FrameTooLargeError:
    return FrameTooLargeError(f"the reply is {size} bytes or more, over the limit of {limit}")
