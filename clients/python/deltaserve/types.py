"""Plain Python values that the deltaserve clients return.

The clients convert every protobuf message they receive into one of these
dataclasses, so callers never handle generated protobuf classes. Enums are
``str`` enums whose values are the protobuf names without their prefix
(``FinishReason.STOP == "STOP"``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Union

__all__ = [
    "FinishReason",
    "LayerKind",
    "HealthStatus",
    "TokenLogprob",
    "PositionLogprobs",
    "Chunk",
    "Completion",
    "GenerateEvent",
    "Generation",
    "ModelInfo",
]


class FinishReason(str, enum.Enum):
    """Why a generation ended."""

    #: The server sent no reason (or one this client does not know).
    UNSPECIFIED = "UNSPECIFIED"
    #: An end-of-sequence token, a stop token id or a stop string.
    STOP = "STOP"
    #: ``max_new_tokens`` (or the model's context limit) was reached.
    LENGTH = "LENGTH"
    #: The server cancelled the generation (e.g. it is shutting down).
    CANCELLED = "CANCELLED"


class LayerKind(str, enum.Enum):
    """The token mixer of one model layer."""

    UNSPECIFIED = "UNSPECIFIED"
    GATED_DELTA_RULE = "GATED_DELTA_RULE"
    GLOBAL_ATTENTION = "GLOBAL_ATTENTION"
    SLIDING_WINDOW_ATTENTION = "SLIDING_WINDOW_ATTENTION"
    LINEAR_ATTENTION = "LINEAR_ATTENTION"
    POWER_ATTENTION = "POWER_ATTENTION"


class HealthStatus(str, enum.Enum):
    """A server's (or one of its services') health, as grpc.health.v1
    reports it."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclass(frozen=True)
class TokenLogprob:
    """One candidate token and its natural-log probability (temperature 1,
    before top-k/top-p)."""

    id: int
    logprob: float


@dataclass(frozen=True)
class PositionLogprobs:
    """Log-probabilities at one generated position: the sampled token and
    the most likely candidates, most likely first."""

    sampled: TokenLogprob
    top: List[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    """Tokens generated since the previous chunk.

    Attributes:
        token_ids: The new token ids, in order.
        text: Their text (never a partial UTF-8 character; empty when the
            model has no tokenizer).
        prompt_tokens: Number of prompt tokens.
        completion_tokens: Number of tokens generated so far, these included.
        logprobs: One entry per token in ``token_ids`` when the request asked
            for ``top_logprobs``; empty otherwise.
    """

    token_ids: List[int]
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: List[PositionLogprobs] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    """The end of a successful generation: the last item a generate stream
    yields.

    Attributes:
        finish_reason: Why generation ended.
        prompt_tokens: Number of prompt tokens.
        completion_tokens: Number of generated tokens.
        time_to_first_token_s: Seconds from the request's arrival at the
            server to its first generated token.
        request_id: The request's id (the server's if the request had none).
        matched_stop: The stop string that ended generation, or ``""``.
    """

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    request_id: str
    matched_stop: str = ""


#: What iterating over a generate stream yields: chunks, then one completion.
GenerateEvent = Union[Chunk, Completion]


@dataclass(frozen=True)
class Generation:
    """A whole generation, as ``generate_text`` returns it.

    Attributes:
        text: All generated text.
        token_ids: All generated token ids.
        logprobs: One entry per generated token when the request asked for
            ``top_logprobs``; empty otherwise.
        completion: How the generation ended.
    """

    text: str
    token_ids: List[int]
    logprobs: List[PositionLogprobs]
    completion: Completion

    @property
    def finish_reason(self) -> FinishReason:
        """Shorthand for ``completion.finish_reason``."""
        return self.completion.finish_reason


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know about one model a server has loaded.

    Attributes:
        name: The name requests use.
        architecture: The checkpoint's ``model_type``, e.g. ``"qwen3_5_text"``.
        layer_kinds: The token mixer of each layer, in order.
        recurrent_state_bytes: Bytes of recurrent state one sequence holds,
            whatever its length.
        kv_bytes_per_token: Bytes of attention KV cache per token of context.
        context_limit: Longest context (prompt + generated tokens) accepted.
        has_tokenizer: Whether text prompts are accepted.
        vocab_size: Valid token ids are ``range(vocab_size)``.
        num_parameters: Number of parameters.
        eos_token_ids: End-of-sequence token ids.
        is_default: Whether requests with no ``model`` use this one.
    """

    name: str
    architecture: str
    layer_kinds: List[LayerKind]
    recurrent_state_bytes: int
    kv_bytes_per_token: int
    context_limit: int
    has_tokenizer: bool
    vocab_size: int
    num_parameters: int
    eos_token_ids: List[int]
    is_default: bool


def _enum_member(enum_cls: type, name: Optional[str], prefix: str):
    """The member of ``enum_cls`` named by protobuf enum value ``name`` with
    ``prefix`` removed, or its UNSPECIFIED/UNKNOWN member when unknown."""
    fallback = next(iter(enum_cls))  # type: ignore[call-overload]
    if name is None:
        return fallback
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    try:
        return enum_cls(name)
    except ValueError:
        return fallback
