"""The asyncio deltaserve client, on grpc.aio."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable, List, Optional, Sequence, Union

import grpc
import grpc.aio

from deltaserve import _convert
from deltaserve import _health_pb2
from deltaserve import errors
from deltaserve import types
from deltaserve.client import DEFAULT_TARGET
from deltaserve.v1 import inference_pb2_grpc
from deltaserve.v1 import models_pb2
from deltaserve.v1 import models_pb2_grpc

__all__ = ["AsyncClient", "AsyncGenerateStream"]


class AsyncGenerateStream(AsyncIterator[types.GenerateEvent]):
    """One running generation: an async iterator of
    :class:`~deltaserve.types.Chunk` values followed by exactly one
    :class:`~deltaserve.types.Completion`.

    Iterating raises :class:`~deltaserve.errors.DeltaserveError` if the call
    fails. Stopping early cancels the generation on the server: call
    :meth:`cancel` or leave an ``async with`` block around the stream
    (breaking out of ``async for`` alone cancels only when the stream is
    garbage-collected). Cancelling the task that iterates cancels the call
    too. Use it on the event loop that created it.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call
        self._finished = False
        self._cancelled = False
        self._completion: Optional[types.Completion] = None

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    async def __anext__(self) -> types.GenerateEvent:
        while True:
            if self._finished:
                raise StopAsyncIteration
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                self._finished = True
                if self._cancelled:
                    raise StopAsyncIteration from None
                self._call.cancel()  # The reading task was cancelled.
                raise
            except grpc.RpcError as error:
                self._finished = True
                if self._cancelled:
                    raise StopAsyncIteration from None
                raise errors.from_rpc_error(error) from None
            if message is grpc.aio.EOF:
                self._finished = True
                if self._completion is None:
                    raise _convert.missing_completion()
                raise StopAsyncIteration
            item = _convert.event(message)
            if item is None:
                continue
            if isinstance(item, types.Completion):
                self._completion = item
            return item

    def cancel(self) -> bool:
        """Cancels the generation unless it has already ended; iteration then
        stops. Returns whether the call was still running."""
        if self._finished:
            return False
        self._cancelled = True
        return bool(self._call.cancel())

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` stopped this generation."""
        return self._cancelled

    @property
    def completion(self) -> Optional[types.Completion]:
        """The Completion, once the stream has yielded it; else None."""
        return self._completion

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()


class AsyncClient:
    """An asyncio client of one deltaserve server (or router), with the same
    methods as :class:`~deltaserve.Client` as coroutines (``generate``
    returns an async iterator).

    It owns a grpc.aio channel, created on first use so that it belongs to
    the running event loop, and closed by :meth:`close` or at the end of an
    ``async with`` block. Use one client from one event loop. Every method
    raises :class:`~deltaserve.errors.DeltaserveError` when the call fails.

    Example::

        async with deltaserve.AsyncClient("127.0.0.1:50051") as client:
            async for item in client.generate("import os", max_new_tokens=32):
                if isinstance(item, deltaserve.Chunk):
                    print(item.text, end="", flush=True)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[tuple]] = None,
        timeout: Optional[float] = None,
    ) -> None:
        """Prepares a client of ``target``; see :class:`~deltaserve.Client`
        for the arguments."""
        self.target = target
        self._credentials = credentials
        self._options = options
        self._timeout = timeout
        self._channel: Optional[grpc.aio.Channel] = None
        self._closed = False

    def _connect(self) -> grpc.aio.Channel:
        if self._closed:
            raise ValueError("the client is closed")
        if self._channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=self._options
                )
            self._channel = channel
            self._inference = inference_pb2_grpc.InferenceStub(channel)
            self._models = models_pb2_grpc.ModelsStub(channel)
            self._health_check = channel.unary_unary(
                _convert.HEALTH_CHECK_METHOD,
                request_serializer=_health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=_health_pb2.HealthCheckResponse.FromString,
            )
        return self._channel

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self._timeout if timeout is None else timeout

    def generate(
        self,
        prompt: Optional[Union[str, bytes]] = None,
        *,
        token_ids: Optional[Sequence[int]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: Optional[float] = None,
        seed: int = 0,
        stop: _convert.StopArg = (),
        stop_token_ids: Iterable[int] = (),
        ignore_eos: bool = False,
        top_logprobs: int = 0,
        request_id: str = "",
        model: str = "",
        timeout: Optional[float] = None,
    ) -> AsyncGenerateStream:
        """Starts a generation (call it from a coroutine) and returns its
        async stream of chunks and final completion. The arguments and
        errors are those of :meth:`deltaserve.Client.generate`."""
        request = _convert.generate_request(
            prompt=prompt,
            token_ids=token_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            top_logprobs=top_logprobs,
            request_id=request_id,
            model=model,
        )
        self._connect()
        call = self._inference.Generate(request, timeout=self._deadline(timeout))
        return AsyncGenerateStream(call)

    async def generate_text(
        self,
        prompt: Optional[Union[str, bytes]] = None,
        **kwargs,
    ) -> types.Generation:
        """Runs a generation to its end and returns all of it; see
        :meth:`deltaserve.Client.generate_text`."""
        accumulator = _convert.TextAccumulator()
        async with self.generate(prompt, **kwargs) as stream:
            async for item in stream:
                accumulator.add(item)
        return accumulator.result()

    async def list_models(self, *, timeout: Optional[float] = None) -> List[types.ModelInfo]:
        """Every model the server has loaded, the default model first."""
        self._connect()
        try:
            response = await self._models.ListModels(
                models_pb2.ListModelsRequest(), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return [_convert.model_info(m) for m in response.models]

    async def get_model(self, name: str, *, timeout: Optional[float] = None) -> types.ModelInfo:
        """One model by name; raises ``NotFoundError`` when the server has no
        such model."""
        self._connect()
        try:
            response = await self._models.GetModel(
                models_pb2.GetModelRequest(name=name), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return _convert.model_info(response)

    async def health(
        self, service: str = "", *, timeout: Optional[float] = None
    ) -> types.HealthStatus:
        """The server's (or one service's) health; see
        :meth:`deltaserve.Client.health`."""
        self._connect()
        try:
            response = await self._health_check(
                _convert.health_request(service), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return _convert.health_status(response)

    async def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Waits until the channel is connected; raises ``UnavailableError``
        if that takes longer than ``timeout`` seconds."""
        channel = self._connect()
        try:
            await asyncio.wait_for(channel.channel_ready(), self._deadline(timeout))
        except asyncio.TimeoutError:
            raise errors.UnavailableError(
                "UNAVAILABLE",
                f"no connection to {self.target} within {self._deadline(timeout)} s",
                grpc.StatusCode.UNAVAILABLE,
            ) from None

    async def close(self) -> None:
        """Closes the channel, cancelling calls still running. Idempotent."""
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
