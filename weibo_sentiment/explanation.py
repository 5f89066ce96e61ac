"""Why a label was given, as data: the spans of a post that moved its predicted label's probability most.

Captum's layer integrated gradients on the input token embeddings, for the calibrated probability
(softmax(logits / T)) of the predicted label, through the adapter that predicted it. Token attributions are
summed into units of the original text: one Chinese character, one whole Latin/digit word (its WordPiece
pieces together), one emoticon ([哈哈] or an emoji, as `EMOTICON_RE` defines them); a unit is always the
original characters, never a `##` piece or `[UNK]`. Positive weights support the predicted label.

Integrated gradients need the model's gradients: only the torch backend (`Predictor`) can be explained. The
forward passes run inside the predictor's `routing`, as its predictions do: the adapter selected (merged into
the base while it is the only one) under the predictor's lock, the default one selected again afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients

from .emoticons import EMOTICON_RE
from .errors import UserError
from .inference.predictor import check_texts

DEFAULT_TOP_K = 5
# Steps of Captum's Gauss-Legendre integral: each is one forward and backward pass, so the cost grows with them.
# Most posts need few (docs/explanations.md measures it); a post whose probability turns steeply on the way
# from the baseline is off by more than TOLERANCE (in probability) and is integrated again with twice the
# steps, up to MAX_STEPS, so the few that need many do not make every post pay for them.
DEFAULT_STEPS = 16
MAX_STEPS = 128
TOLERANCE = 0.01
NOT_TORCH = ("explanations need the torch backend (--backend torch): integrated gradients need the model's "
             "gradients, which an ONNX export does not have")


@dataclass
class Explanation:
    """The attribution of one post's predicted-label probability to the units of its text."""

    text: str
    adapter: str
    label: int
    label_name: str
    probability: float  # the calibrated probability of `label`: the output explained
    units: list[tuple[int, int, float]]  # (start, end, weight) of every unit the model read, in text order
    delta: float  # completeness error: sum of the weights minus (probability - baseline_probability)
    baseline_probability: float  # the label's probability for the post with every word replaced by [PAD]
    n_steps: int  # integration steps it took to bring `delta` within the tolerance (or to the most allowed)

    def ranked(self, k: int | None = DEFAULT_TOP_K) -> list[tuple[int, int, float]]:
        """The `k` units of largest |weight| (all when None), largest first (ties in text order)."""
        return sorted(self.units, key=lambda u: -abs(u[2]))[:k]

    def top(self, k: int | None = DEFAULT_TOP_K) -> list[list]:
        """The `k` units of largest |weight| (all when None) as [[span, weight], ...], largest first."""
        return [[self.text[s:e], round(float(w), 6)] for s, e, w in self.ranked(k)]


def require_torch_model(predictor) -> torch.nn.Module:
    """The torch model behind `predictor`; a UserError for a backend without gradients (ONNX)."""
    model = getattr(predictor, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise UserError(NOT_TORCH)
    return model


def check_top_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UserError(f"--explain {k!r}: the number of spans must be a whole number of at least 1")


def text_units(text: str, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None]) -> list[list[int]]:
    """Group token positions into units of `text`: [start, end, position, position, ...] each, in text order.

    Tokens of one pre-tokenizer word (the fast tokenizer's `word_ids`: a Chinese character, or a Latin/digit
    run split into WordPiece pieces) form one unit; every unit an emoticon overlaps joins it, so `[哈哈]` (four
    words to BERT's pre-tokenizer) and an emoji read as [UNK] are single units. Special tokens have no unit.
    """
    units: dict[int, list[int]] = {}
    for pos, (word, (start, end)) in enumerate(zip(word_ids, offsets)):
        if word is None or end <= start:
            continue
        unit = units.setdefault(word, [start, end])
        unit[0], unit[1] = min(unit[0], start), max(unit[1], end)
        unit.append(pos)
    merged = sorted(units.values())
    for match in EMOTICON_RE.finditer(text):
        inside = [u for u in merged if u[0] < match.end() and match.start() < u[1]]
        if not inside:
            continue
        joined = [min(match.start(), inside[0][0]), max(match.end(), inside[-1][1])]
        joined += [p for u in inside for p in u[2:]]
        merged = sorted([u for u in merged if u not in inside] + [joined])
    return merged


def probability_fn(model: torch.nn.Module, temperature: float):
    """forward(input_ids, attention_mask) -> calibrated probabilities, through the adapter selected."""

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return torch.softmax(logits / temperature, dim=-1)

    return forward


def pad_baselines(input_ids: torch.Tensor, special: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The integration's starting point: every token that is not special replaced by [PAD].

    [PAD] is the one token the classifier never reads as content (GPT-2's attention is causal and pads come
    after the last token, whose state is classified), so its embedding is this vocabulary's "no word here";
    [CLS], [SEP] and the positions stay as in the post, so the weights speak of the words alone. A zero
    embedding, the usual alternative, is a vector no token has, far from anything the model was trained on.
    """
    return torch.where(special.bool(), input_ids, torch.full_like(input_ids, pad_id))


def explain(predictor, texts: Sequence[str], adapters: Sequence[str | None] | None = None, *,
            labels: Sequence[int] | None = None, n_steps: int = DEFAULT_STEPS, max_steps: int = MAX_STEPS,
            tolerance: float = TOLERANCE, batch_size: int = 8, rows_per_pass: int = 256) -> list[Explanation]:
    """Explain the predicted label of each text with the adapter that predicts it (`adapters`: one name per
    text, None or '' for the default; None: the default for all), in input order. `labels` (one per text)
    explains those labels instead, e.g. the ones a prediction reported.

    Posts whose completeness error exceeds `tolerance` are integrated again with twice the steps, up to
    `max_steps`. `batch_size` posts are integrated together; `rows_per_pass` bounds the rows (posts x steps)
    of one forward pass, and so the memory.
    """
    require_torch_model(predictor)
    check_texts(texts)
    names = predictor.route(texts, [None] * len(texts) if adapters is None else adapters)
    if labels is not None and len(labels) != len(texts):
        raise UserError(f"{len(texts)} texts but {len(labels)} labels; give one per text")
    settings = Integration(n_steps, max_steps, tolerance, rows_per_pass)
    out: list[Explanation | None] = [None] * len(texts)
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        targets = None if labels is None else [labels[i] for i in rows]
        explained = explain_with(predictor, [texts[i] for i in rows], name, targets, settings, batch_size)
        for i, explanation in zip(rows, explained):
            out[i] = explanation
    return out


@dataclass(frozen=True)
class Integration:
    n_steps: int
    max_steps: int
    tolerance: float
    rows_per_pass: int


def integrate(lig: LayerIntegratedGradients, ids: torch.Tensor, baselines: torch.Tensor, mask: torch.Tensor,
              labels: torch.Tensor, settings: Integration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token weights (posts x tokens), completeness errors and steps used: `n_steps` first, then twice as
    many for the posts still off by more than the tolerance (a steep probability needs a finer integral)."""
    weights = np.zeros(ids.shape, dtype=np.float32)
    deltas = np.zeros(len(ids), dtype=np.float32)
    used = np.zeros(len(ids), dtype=np.int64)
    todo, steps = np.arange(len(ids)), settings.n_steps
    while len(todo):
        rows = torch.from_numpy(todo).to(ids.device)
        attributions, delta = lig.attribute(
            ids[rows], baselines=baselines[rows], target=labels[rows], additional_forward_args=(mask[rows],),
            n_steps=steps, internal_batch_size=max(settings.rows_per_pass, len(todo)),
            return_convergence_delta=True)
        weights[todo] = attributions.sum(-1).detach().float().cpu().numpy()
        deltas[todo] = delta.detach().float().cpu().numpy()
        used[todo] = steps
        todo = todo[np.abs(deltas[todo]) > settings.tolerance]
        steps *= 2
        if steps > settings.max_steps:
            break
    return weights, deltas, used


def explain_with(predictor, texts: Sequence[str], adapter: str, labels: Sequence[int] | None,
                 settings: Integration, batch_size: int) -> list[Explanation]:
    """`explain` for texts that all go through `adapter`, in batches of similar length."""
    # The predictor's routing runs its forward passes in inference mode; integrated gradients need gradients.
    with predictor.routing([adapter]), torch.inference_mode(False), torch.enable_grad():
        return explain_selected(predictor, texts, adapter, labels, settings, batch_size)


def explain_selected(predictor, texts: Sequence[str], adapter: str, labels: Sequence[int] | None,
                     settings: Integration, batch_size: int) -> list[Explanation]:
    """`explain_with`, `adapter` being selected."""
    info = predictor.adapters[adapter]
    tokenizer = predictor.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=info.max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True, return_attention_mask=False)
    model = require_torch_model(predictor)
    lig = LayerIntegratedGradients(probability_fn(model, predictor.temperature(adapter)),
                                   model.get_input_embeddings())
    order = np.argsort([len(x) for x in encoded["input_ids"]], kind="stable")
    out: list[Explanation | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in rows],
                               "special_tokens_mask": [encoded["special_tokens_mask"][i] for i in rows]},
                              return_tensors="pt")
        ids = batch["input_ids"].to(predictor.device)
        mask = batch["attention_mask"].to(predictor.device)
        special = (batch["special_tokens_mask"].to(predictor.device) == 1) | (mask == 0)
        with torch.no_grad():
            probs = lig.forward_func(ids, mask)
        targets = probs.argmax(-1) if labels is None else torch.tensor([labels[i] for i in rows]).to(ids.device)
        weights, deltas, steps = integrate(lig, ids, pad_baselines(ids, special, tokenizer.pad_token_id), mask,
                                           targets, settings)
        probs = probs.float().cpu().numpy()
        for j, i in enumerate(rows):
            label = int(targets[j])
            units = text_units(texts[i], encoded["offset_mapping"][i], encoded.word_ids(int(i)))
            out[i] = Explanation(
                text=texts[i], adapter=adapter, label=label, label_name=info.label_names[label],
                probability=float(probs[j, label]), delta=float(deltas[j]), n_steps=int(steps[j]),
                baseline_probability=float(probs[j, label] - weights[j].sum() + deltas[j]),
                units=[(u[0], u[1], float(weights[j, u[2:]].sum())) for u in units])
    return out


def explanation_cells(explanation: Explanation, k: int | None) -> dict:
    """A prediction row's explanation columns: its `k` top spans as (span, weight) pairs (a JSON list in CSV,
    a list in JSON lines, a list of span/weight structs in Parquet) and its completeness error."""
    return {"explanation": [(span, weight) for span, weight in explanation.top(k)],
            "completeness_error": round(explanation.delta, 6) + 0.0}  # + 0.0: no -0.0


def add_explanations(predictor, preds: Sequence, rows: Sequence[dict], k: int | None) -> None:
    """Add to each prediction's row (`rows[i]` for `preds[i]`) the explanation of its label, by its adapter."""
    explanations = explain(predictor, [p.text for p in preds], [p.adapter for p in preds],
                           labels=[p.label for p in preds])
    for row, explanation in zip(rows, explanations, strict=True):
        row.update(explanation_cells(explanation, k))
