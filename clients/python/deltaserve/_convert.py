"""Conversions between the generated protobuf messages and the client's
Python values, shared by the synchronous and asyncio clients."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from deltaserve import _health_pb2
from deltaserve import errors
from deltaserve import types
from deltaserve.v1 import inference_pb2
from deltaserve.v1 import models_pb2

# Full method names of the calls that have no generated stub module.
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

StopArg = Union[str, bytes, Iterable[Union[str, bytes]]]


def _utf8(value: Union[str, bytes], what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def generate_request(
    *,
    prompt: Optional[Union[str, bytes]],
    token_ids: Optional[Sequence[int]],
    max_new_tokens: Optional[int],
    temperature: float,
    top_k: int,
    top_p: Optional[float],
    seed: int,
    stop: StopArg,
    stop_token_ids: Iterable[int],
    ignore_eos: bool,
    top_logprobs: int,
    request_id: str,
    model: str,
) -> inference_pb2.GenerateRequest:
    """Builds a GenerateRequest. Raises ValueError unless exactly one of
    ``prompt`` and ``token_ids`` is given, and TypeError for arguments of the
    wrong type; the server checks ranges (INVALID_ARGUMENT)."""
    if (prompt is None) == (token_ids is None):
        raise ValueError("give exactly one of prompt and token_ids")
    request = inference_pb2.GenerateRequest(
        request_id=request_id, model=model, top_logprobs=top_logprobs
    )
    if prompt is not None:
        request.text = _utf8(prompt, "prompt")
    else:
        request.token_ids.ids.extend(token_ids)  # type: ignore[arg-type]
    sampling = request.sampling
    sampling.temperature = temperature
    sampling.top_k = top_k
    sampling.seed = seed
    sampling.ignore_eos = ignore_eos
    if top_p is not None:
        sampling.top_p = top_p
    if max_new_tokens is not None:
        sampling.max_new_tokens = max_new_tokens
    if isinstance(stop, (str, bytes, bytearray, memoryview)):
        stop = [stop]
    sampling.stop.extend(_utf8(s, "a stop string") for s in stop)
    sampling.stop_token_ids.extend(stop_token_ids)
    return request


def _token_logprob(message: inference_pb2.TokenLogprob) -> types.TokenLogprob:
    return types.TokenLogprob(id=message.id, logprob=message.logprob)


def chunk(message: inference_pb2.Chunk) -> types.Chunk:
    """The Chunk value of a Chunk message."""
    return types.Chunk(
        token_ids=list(message.token_ids),
        text=message.text,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        logprobs=[
            types.PositionLogprobs(
                sampled=_token_logprob(p.sampled),
                top=[_token_logprob(t) for t in p.top],
            )
            for p in message.logprobs
        ],
    )


def _enum_name(enum_type, value: int) -> Optional[str]:
    try:
        return enum_type.Name(value)
    except ValueError:
        return None


def completion(message: inference_pb2.Completion) -> types.Completion:
    """The Completion value of a Completion message."""
    return types.Completion(
        finish_reason=types._enum_member(
            types.FinishReason,
            _enum_name(inference_pb2.FinishReason, message.finish_reason),
            "FINISH_REASON_",
        ),
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        time_to_first_token_s=message.time_to_first_token_s,
        request_id=message.request_id,
        matched_stop=message.matched_stop,
    )


def event(
    message: inference_pb2.GenerateResponse,
) -> Optional[types.GenerateEvent]:
    """The chunk or completion a GenerateResponse carries; None for a kind
    this client does not know (a newer server's), which callers skip."""
    kind = message.WhichOneof("kind")
    if kind == "chunk":
        return chunk(message.chunk)
    if kind == "completion":
        return completion(message.completion)
    return None


def model_info(message: models_pb2.ModelInfo) -> types.ModelInfo:
    """The ModelInfo value of a ModelInfo message."""
    return types.ModelInfo(
        name=message.name,
        architecture=message.architecture,
        layer_kinds=[
            types._enum_member(
                types.LayerKind,
                _enum_name(models_pb2.LayerKind, k),
                "LAYER_KIND_",
            )
            for k in message.layer_kinds
        ],
        recurrent_state_bytes=message.recurrent_state_bytes,
        kv_bytes_per_token=message.kv_bytes_per_token,
        context_limit=message.context_limit,
        has_tokenizer=message.has_tokenizer,
        vocab_size=message.vocab_size,
        num_parameters=message.num_parameters,
        eos_token_ids=list(message.eos_token_ids),
        is_default=message.is_default,
    )


def health_request(service: str) -> _health_pb2.HealthCheckRequest:
    """A health check request for ``service`` ("" is the whole server)."""
    return _health_pb2.HealthCheckRequest(service=service)


def health_status(
    message: _health_pb2.HealthCheckResponse,
) -> types.HealthStatus:
    """The HealthStatus of a health check response."""
    return types._enum_member(
        types.HealthStatus,
        _enum_name(_health_pb2.HealthCheckResponse.ServingStatus, message.status),
        "",
    )


def missing_completion() -> errors.DeltaserveError:
    """The error for a stream that ended without its Completion."""
    return errors.DeltaserveError(
        "INTERNAL", "the Generate stream ended without a Completion"
    )


class TextAccumulator:
    """Collects a stream's chunks into a Generation."""

    def __init__(self) -> None:
        self._text: list = []
        self._token_ids: list = []
        self._logprobs: list = []
        self.completion: Optional[types.Completion] = None

    def add(self, item: types.GenerateEvent) -> None:
        if isinstance(item, types.Chunk):
            self._text.append(item.text)
            self._token_ids.extend(item.token_ids)
            self._logprobs.extend(item.logprobs)
        else:
            self.completion = item

    def result(self) -> types.Generation:
        if self.completion is None:
            raise missing_completion()
        return types.Generation(
            text="".join(self._text),
            token_ids=self._token_ids,
            logprobs=self._logprobs,
            completion=self.completion,
        )
