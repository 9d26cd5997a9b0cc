"""The synchronous deltaserve client."""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Union

import grpc

from deltaserve import _convert
from deltaserve import _health_pb2
from deltaserve import errors
from deltaserve import types
from deltaserve.v1 import inference_pb2_grpc
from deltaserve.v1 import models_pb2
from deltaserve.v1 import models_pb2_grpc

__all__ = ["Client", "GenerateStream", "DEFAULT_TARGET"]

#: Where deltaserve-server listens unless told otherwise.
DEFAULT_TARGET = "127.0.0.1:50051"


class GenerateStream(Iterator[types.GenerateEvent]):
    """One running generation: an iterator of :class:`~deltaserve.types.Chunk`
    values followed by exactly one :class:`~deltaserve.types.Completion`.

    Iterating raises :class:`~deltaserve.errors.DeltaserveError` if the call
    fails. Stopping early cancels the generation on the server: call
    :meth:`cancel`, leave a ``with`` block around the stream, or drop the
    last reference to it (``for chunk in client.generate(...): break``
    cancels at once in CPython). A stream is read by one thread; ``cancel``
    may be called from any thread.
    """

    def __init__(self, call: grpc.Call) -> None:
        self._call = call
        self._finished = False
        self._cancelled = False
        self._completion: Optional[types.Completion] = None

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> types.GenerateEvent:
        while True:
            if self._finished:
                raise StopIteration
            try:
                message = next(self._call)  # type: ignore[call-overload]
            except StopIteration:
                self._finished = True
                if self._completion is None:
                    raise _convert.missing_completion() from None
                raise
            except grpc.RpcError as error:
                self._finished = True
                if self._cancelled:
                    raise StopIteration from None
                raise errors.from_rpc_error(error) from None
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

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:  # The channel may be gone at interpreter exit.
            pass


class Client:
    """A synchronous client of one deltaserve server (or router).

    It owns a gRPC channel, which it closes on :meth:`close` or when a
    ``with`` block around it ends. Thread-safe: one client may serve many
    threads at once. Every method raises
    :class:`~deltaserve.errors.DeltaserveError` (a subclass matching the gRPC
    status code) when the call fails; ``timeout`` arguments are seconds, and
    a call that runs past its timeout raises ``DeadlineExceededError``.
    Methods raise ValueError once the client is closed.

    Example::

        with deltaserve.Client("127.0.0.1:50051") as client:
            for item in client.generate("import os", max_new_tokens=32):
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
        """Connects (lazily) to ``target``, e.g. ``"127.0.0.1:50051"``.

        Args:
            target: The server's address, in gRPC's target syntax.
            credentials: TLS credentials; None for a plaintext channel.
            options: gRPC channel options, as (name, value) pairs.
            timeout: Default timeout, in seconds, of every call that is not
                given its own; None means no deadline.
        """
        self.target = target
        self._timeout = timeout
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)
        self._health_check = self._channel.unary_unary(
            _convert.HEALTH_CHECK_METHOD,
            request_serializer=_health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=_health_pb2.HealthCheckResponse.FromString,
        )
        self._closed = False

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        if self._closed:
            raise ValueError("the client is closed")
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
    ) -> GenerateStream:
        """Starts a generation and returns its stream of chunks and final
        completion.

        Args:
            prompt: Text prompt (str, encoded as UTF-8, or UTF-8 bytes).
            token_ids: Prompt as token ids instead; give exactly one of
                ``prompt`` and ``token_ids``.
            max_new_tokens: Tokens to generate; None uses the server's
                default.
            temperature: 0 is greedy (argmax).
            top_k: Keep only the k most likely tokens; 0 means no limit.
            top_p: Nucleus sampling mass in (0, 1]; None means 1.
            seed: Seed of the request's random generator; 0 lets the server
                pick one.
            stop: Stop strings (one str, or several); the text ends just
                before the first one generated.
            stop_token_ids: Token ids that end generation (and are output).
            ignore_eos: Keep generating past end-of-sequence tokens.
            top_logprobs: Return this many (at most 20) most likely tokens'
                log-probabilities at every generated position.
            request_id: The caller's id for the request ("" lets the server
                assign one; the Completion reports it).
            model: Model name; "" is the server's default model.
            timeout: Deadline of the whole stream, in seconds.

        Returns:
            A :class:`GenerateStream`. Errors (e.g. ``InvalidArgumentError``
            for ``top_p=2``) are raised while iterating over it.

        Raises:
            ValueError: Neither or both of ``prompt`` and ``token_ids``.
            TypeError: A prompt or stop string that is not str or bytes.
        """
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
        call = self._inference.Generate(request, timeout=self._deadline(timeout))
        return GenerateStream(call)

    def generate_text(
        self,
        prompt: Optional[Union[str, bytes]] = None,
        **kwargs,
    ) -> types.Generation:
        """Runs a generation to its end and returns all of it: text, token
        ids, log-probabilities and completion. Takes the same arguments as
        :meth:`generate` and raises the same errors."""
        accumulator = _convert.TextAccumulator()
        with self.generate(prompt, **kwargs) as stream:
            for item in stream:
                accumulator.add(item)
        return accumulator.result()

    def list_models(self, *, timeout: Optional[float] = None) -> List[types.ModelInfo]:
        """Every model the server has loaded, the default model first."""
        try:
            response = self._models.ListModels(
                models_pb2.ListModelsRequest(), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return [_convert.model_info(m) for m in response.models]

    def get_model(self, name: str, *, timeout: Optional[float] = None) -> types.ModelInfo:
        """One model by name; raises ``NotFoundError`` (``NOT_FOUND``) when the
        server has no such model."""
        try:
            response = self._models.GetModel(
                models_pb2.GetModelRequest(name=name), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return _convert.model_info(response)

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> types.HealthStatus:
        """The server's health (``service=""``) or one service's, e.g.
        ``"deltaserve.v1.Inference"``, from grpc.health.v1. Raises
        ``NotFoundError`` for a service the server does not know, and
        ``UnavailableError`` when the server cannot be reached."""
        try:
            response = self._health_check(
                _convert.health_request(service), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        return _convert.health_status(response)

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Blocks until the channel is connected; raises ``UnavailableError``
        if that takes longer than ``timeout`` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._deadline(timeout))
        except grpc.FutureTimeoutError:
            raise errors.UnavailableError(
                "UNAVAILABLE",
                f"no connection to {self.target} within {self._deadline(timeout)} s",
                grpc.StatusCode.UNAVAILABLE,
            ) from None

    def close(self) -> None:
        """Closes the channel, cancelling calls still running. Idempotent."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
