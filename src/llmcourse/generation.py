"""Decoding: turning a language model's next-token scores into text.

A causal language model gives, for the text so far, one score (logit) per vocabulary entry
for the next token. Decoding picks a token, appends it and asks again. The ways of picking:

* **greedy** (``temperature=0``): always the most probable token. Deterministic, and prone to
  loops ("the king, the king, the king").
* **sampling** at a **temperature** T: draw from ``softmax(logits / T)``. T < 1 sharpens the
  distribution towards greedy, T > 1 flattens it towards uniform noise.
* **top-k** (Fan et al., 2018): sample only among the k most probable tokens.
* **top-p** or nucleus sampling (Holtzman et al., 2020): sample only among the smallest set of
  most probable tokens whose probabilities add up to at least p; the set is small where the
  model is sure and large where it is not.
* **repetition penalty** (Keskar et al., 2019, CTRL): make tokens already in the text less likely.
* **beam search**: keep the ``num_beams`` most probable partial sequences at every step and
  return the most probable finished one, its log-probability divided by ``length ** length_penalty``.

Stop conditions: ``max_new_tokens``, a stop token (end of text), or a stop string appearing in
the decoded text. A sequence that stops is padded while the others go on.

``generate`` and ``beam_search`` work with any ``Decoder``: the course's ``GPT``
(``llmcourse.transformer``) and its modern ``LlamaDecoder`` (``llmcourse.llama``, which runs
SmolLM2's real weights). They use the model's key/value cache (``use_cache=True``): the prompt is
run once, then each step feeds only the newest token. Cached and uncached decoding give the same tokens; ``tests/test_generation.py``
checks that, and checks greedy, sampled and beam-search output against Hugging Face's ``generate``
on GPT-2 weights loaded into our GPT.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from llmcourse.attention import KVCache

__all__ = [
    "Decoder",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "apply_repetition_penalty",
    "generate",
    "BeamSearchResult",
    "beam_search",
]

_NEG_INF = float("-inf")


class Decoder(Protocol):
    """What decoding needs of a model: its longest context, a cache, and next-token logits."""

    config: Any  # with .block_size, the most positions the model can see

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty key/value cache for ``batch_size`` sequences of up to ``max_length`` tokens."""
        ...

    def __call__(self, input_ids: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """(B, T) ids (positions ``cache.length`` onwards) -> (B, T, V) logits, (B, 1, V) with ``last_only``."""
        ...


# --------------------------------------------------------------------------------------------
# Logit processing: each function maps (B, V) scores to (B, V) scores
# --------------------------------------------------------------------------------------------


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide the logits by ``temperature`` (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}; generate(temperature=0) decodes greedily")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep each row's ``k`` highest logits (and any tied with the k-th); set the others to -inf."""
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    k = min(k, logits.shape[-1])
    kth_best = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, _NEG_INF)


def top_p_filter(logits: Tensor, p: float, min_keep: int = 1) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability reaches ``p``.

    A token is dropped when the tokens ranked above it already hold probability ``p`` or more,
    so the most probable token always stays (and at least ``min_keep`` tokens); others -> -inf.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V), most probable first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    mass_above = F.pad(cumulative[..., :-1], (1, 0))  # probability of the tokens ranked strictly higher
    drop_sorted = mass_above >= p
    drop_sorted[..., :min_keep] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, _NEG_INF)


def apply_repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty: scores of tokens present in ``input_ids`` (B, T) are pushed down.

    A positive score is divided by ``penalty``, a negative one multiplied by it, so with
    ``penalty > 1`` a repeated token always becomes less likely; 1 changes nothing.
    """
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive (1 = none), got {penalty}")
    seen = logits.gather(-1, input_ids)  # (B, T): the score of every token already in the text
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, input_ids, seen)


# --------------------------------------------------------------------------------------------
# Next-token scores, with or without the key/value cache
# --------------------------------------------------------------------------------------------


class _NextTokenScores:
    """Logits of the next token for every row of a growing (B, L) tensor of ids.

    With a cache the first call runs the whole prompt and later calls only the tokens added
    since. The course's GPT has learned absolute positions, so once the text is longer than
    ``block_size`` the window slides, every position moves, and the cached keys are stale: from
    then on each step runs the last ``block_size`` tokens in full, exactly as without a cache.
    """

    def __init__(self, model: Decoder, batch_size: int, max_length: int, use_cache: bool) -> None:
        self.model = model
        self.block_size = model.config.block_size
        self.cache = model.new_cache(batch_size, max_length) if use_cache else None

    def __call__(self, ids: Tensor) -> Tensor:
        """(B, L) ids so far -> (B, V) float32 logits for position L."""
        cache = self.cache
        if cache is not None and ids.shape[1] <= self.block_size:
            logits = self.model(ids[:, cache.length :], cache, last_only=True)
        else:
            logits = self.model(ids[:, -self.block_size :], last_only=True)
        return logits[:, -1].float()  # (B, V): choices are made in float32, as Hugging Face does

    def reorder(self, rows: Tensor) -> None:
        """The rows of the sequences were reordered (beam search): reorder the cache alike."""
        if self.cache is not None:
            self.cache.reorder(rows)


_F = TypeVar("_F", bound=Callable[..., Any])


def _in_decoding_mode(decode_loop: _F) -> _F:
    """Run a decoding loop inside ``model.decoding()`` when the model has one (a fast path it may take).

    The course's GPT reads its output matrix through a transposed copy there (``GPT.decoding``);
    a decoder without the method decodes as it is.
    """
    @functools.wraps(decode_loop)
    def run(model: Decoder, *args: Any, **kwargs: Any) -> Any:
        with getattr(model, "decoding", contextlib.nullcontext)():
            return decode_loop(model, *args, **kwargs)

    return run  # type: ignore[return-value]


def _check_prompt(input_ids: Tensor, max_new_tokens: int) -> None:
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(
            f"input_ids must be a (batch, length) tensor of token ids (torch.long), got shape "
            f"{tuple(input_ids.shape)} and dtype {input_ids.dtype}; a single prompt is ids[None]"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. a start or newline token)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def _stop_ids(stop_token_id: int | Sequence[int] | None, device: torch.device) -> Tensor | None:
    if stop_token_id is None:
        return None
    ids = [stop_token_id] if isinstance(stop_token_id, int) else list(stop_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


# --------------------------------------------------------------------------------------------
# Greedy decoding and sampling
# --------------------------------------------------------------------------------------------


@torch.no_grad()  # not inference_mode: the ids it returns may feed a model being trained
@_in_decoding_mode
def generate(
    model: Decoder,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_token_id: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    on_token: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Extend each (B, T) prompt by up to ``max_new_tokens`` tokens; return (B, T + n) ids.

    ``temperature=0`` decodes greedily; otherwise each token is sampled (with ``generator``, or
    the global RNG) after, in this order, the repetition penalty, the temperature, top-k and
    top-p. A row stops after producing a stop token or when its decoded new text (``decode``)
    contains a stop string (kept in the output); it is then filled with ``pad_token_id``
    (default: the first stop token). Generation ends early when every row has stopped.
    ``on_token``, when given, is called with each step's (B,) new ids as they come (for streaming).
    Put the model in ``eval()`` mode first (dropout would otherwise stay on).
    """
    _check_prompt(input_ids, max_new_tokens)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if stop_strings and decode is None:
        raise ValueError("stop_strings need decode= (a function from a list of ids to text, e.g. tokenizer.decode)")
    stop_ids = _stop_ids(stop_token_id, input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(stop_ids[0]) if stop_ids is not None else None)
    if pad is None and stop_strings and input_ids.shape[0] > 1:
        raise ValueError("rows may stop at different times: pass pad_token_id= to fill the rows that stopped")
    can_stop = stop_ids is not None or bool(stop_strings)

    batch, prompt_length = input_ids.shape
    ids = torch.empty(batch, prompt_length + max_new_tokens, dtype=torch.long, device=input_ids.device)
    ids[:, :prompt_length] = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    scores = _NextTokenScores(model, batch, prompt_length + max_new_tokens, use_cache)
    length = prompt_length
    for _ in range(max_new_tokens):
        logits = scores(ids[:, :length])  # (B, V)
        if repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, ids[:, :length], repetition_penalty)
        if temperature == 0:
            next_ids = logits.argmax(dim=-1)  # (B,)
        else:
            logits = apply_temperature(logits, temperature)
            if top_k is not None:
                logits = top_k_filter(logits, top_k)
            if top_p is not None:
                logits = top_p_filter(logits, top_p)
            next_ids = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        if can_stop and pad is not None:
            next_ids = next_ids.masked_fill(finished, pad)
        ids[:, length] = next_ids
        length += 1
        if on_token is not None:
            on_token(next_ids)
        if can_stop:
            if stop_ids is not None:
                finished |= torch.isin(next_ids, stop_ids)
            for row in range(batch):
                if stop_strings and not finished[row]:
                    text = decode(ids[row, prompt_length:length].tolist())  # type: ignore[misc]
                    finished[row] = any(stop in text for stop in stop_strings)
            if bool(finished.all()):
                break
    return ids[:, :length]


# --------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------


class BeamSearchResult(NamedTuple):
    """Finished hypotheses, best first."""

    sequences: Tensor  # (num_return_sequences, T + n): prompt and continuation, padded on the right
    scores: Tensor  # (num_return_sequences,): sum of log-probabilities / (new tokens ** length_penalty)


@torch.no_grad()  # not inference_mode: the ids it returns may feed a model being trained
@_in_decoding_mode
def beam_search(
    model: Decoder,
    input_ids: Tensor,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    stop_token_id: int | Sequence[int] | None = None,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    pad_token_id: int | None = None,
    use_cache: bool = True,
) -> BeamSearchResult:
    """Beam search from one (1, T) prompt; the best finished sequences and their scores.

    At each step the ``num_beams`` running sequences are extended by every token; of the
    ``2 * num_beams`` best extensions (by summed log-probability), those ending in a stop token
    (or reaching ``max_new_tokens``) that rank within the best ``num_beams`` become finished
    hypotheses, scored ``logprob / new_length ** length_penalty`` (> 0 favours longer ones), and
    the best ``num_beams`` others run on. The search stops when no running sequence can beat
    the worst of ``num_beams`` finished ones (judged at its current length). These are the rules
    of Hugging Face's ``generate(num_beams=...)``, whose output this function reproduces.
    """
    _check_prompt(input_ids, max_new_tokens)
    if input_ids.shape[0] != 1:
        raise ValueError(f"beam_search decodes one prompt at a time, got a batch of {input_ids.shape[0]}; loop over them")
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got {num_beams}, {num_return_sequences}")
    if max_new_tokens == 0:
        return BeamSearchResult(input_ids.clone(), torch.zeros(1))
    device = input_ids.device
    stop_ids = _stop_ids(stop_token_id, device)
    pad = pad_token_id if pad_token_id is not None else (int(stop_ids[0]) if stop_ids is not None else 0)
    n_candidates = max(2, 1 + (0 if stop_ids is None else len(stop_ids))) * num_beams

    prompt_length = input_ids.shape[1]
    running = input_ids.repeat(num_beams, 1)  # (k, L)
    running_scores = torch.full((num_beams,), -1e9, device=device)
    running_scores[0] = 0.0  # all beams start equal: expand only the first, or they would pick the same tokens
    finished: list[tuple[float, Tensor]] = []  # (score, sequence), at most num_beams, best first
    scores = _NextTokenScores(model, num_beams, prompt_length + max_new_tokens, use_cache)
    for step in range(max_new_tokens):
        log_probs = scores(running).log_softmax(dim=-1)  # (k, V)
        if repetition_penalty != 1.0:
            log_probs = apply_repetition_penalty(log_probs, running, repetition_penalty)
        vocab_size = log_probs.shape[-1]
        totals = (running_scores[:, None] + log_probs).view(-1)  # (k * V,): every beam + token
        top_scores, flat = totals.topk(n_candidates)  # best first
        beams, tokens = flat // vocab_size, flat % vocab_size
        new_length = step + 1
        ends = torch.ones_like(tokens, dtype=torch.bool) if new_length == max_new_tokens else (
            torch.isin(tokens, stop_ids) if stop_ids is not None else torch.zeros_like(tokens, dtype=torch.bool)
        )
        # Finished hypotheses: candidates that end among the best num_beams. (Scores stay float32
        # tensors until compared, so near-ties break as in Hugging Face's float32 arithmetic.)
        normalised = top_scores / new_length**length_penalty
        for rank in ends[:num_beams].nonzero().flatten().tolist():
            finished.append((normalised[rank].item(), torch.cat([running[beams[rank]], tokens[rank : rank + 1]])))
        finished = sorted(finished, key=lambda hypothesis: hypothesis[0], reverse=True)[:num_beams]
        # Running beams: the best num_beams candidates that do not end.
        live_scores = top_scores + ends.float() * -1e9
        keep = live_scores.topk(num_beams).indices  # (k,)
        running = torch.cat([running[beams[keep]], tokens[keep, None]], dim=1)
        running_scores = live_scores[keep]
        scores.reorder(beams[keep])
        if bool(ends.all()):
            break
        if len(finished) == num_beams and (running_scores[0] / new_length**length_penalty).item() <= finished[-1][0]:
            break  # the best running beam, scored now, is no better than the worst finished hypothesis
    best = finished[:num_return_sequences]
    width = max(len(sequence) for _, sequence in best)
    sequences = torch.full((len(best), width), pad, dtype=torch.long, device=device)
    for row, (_, sequence) in enumerate(best):
        sequences[row, : len(sequence)] = sequence
    return BeamSearchResult(sequences, torch.tensor([score for score, _ in best]))
