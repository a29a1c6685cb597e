"""Attention knockout (Geva et al. 2023): where does the last token read the subject (or the relation) in?

For each layer l and target (the subject's positions, or the relation's: the tokens after the subject), the attention
edges from the last token to the target are blocked in the layers `window_layers(l, window)` of a clean run, and
p(answer) is measured. One clean forward records every block's input; each knocked-out run joins at its window's
first block from the clean input there (the blocks below are the clean run's), and all of them, for every fact,
layer and target of a batch, run together through the remaining blocks, called by hand with their own masks
(`BlockCall.masked`). Checked against `src.edit.reference.plain_knockout` (one forward per layer and target with
the masks put in by hooks) and a hand-written GPT-2 forward (tests).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import BlockCall
from src.edit.model.hooks import RecordCall, Trace, TraceDict
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import EncodedPrompt
from src.edit.tracing.metrics import run_metrics
from src.edit.tracing.results import KNOCKOUT_TARGETS, KnockoutResult, TraceRequest, window_layers


def knockout_positions(prompt: EncodedPrompt) -> dict[str, tuple[int, ...]]:
    """{"subject": the subject's token indices, "relation": those after the subject, the last token's included}."""
    b, e = prompt.subject_range
    return {"subject": tuple(range(b, e)), "relation": tuple(range(e, len(prompt.input_ids)))}


@torch.no_grad()
def knockout_traces(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layout: ModelLayout,
                    device: torch.device, requests: Sequence[TraceRequest], prompts: Sequence[EncodedPrompt],
                    window: int) -> list[KnockoutResult]:
    """One KnockoutResult per fact; every prompt has the same length T."""
    L, F, T = layout.num_layers, len(requests), len(prompts[0].input_ids)
    input_ids = torch.tensor([p.input_ids for p in prompts], device=device)
    blocks = {f"block.{l}": layout.block(l) for l in range(L - 1)}
    with TraceDict(blocks) as outputs, Trace(layout.block(0), retain_input=True, retain_output=False) as first, \
            RecordCall(layout.block(0)) as record:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, -1].float()
    answer_ids, _, measured = run_metrics(tokenizer, requests, logits[:, None], "prob")
    call = BlockCall.from_record(layout.block(0), record, num_tokens=T, batch=F)
    inputs = [first.input] + [outputs[f"block.{l}"].output for l in range(L - 1)]  # block l's input, (F, T, d)
    positions = [knockout_positions(prompt) for prompt in prompts]

    # one row per (fact, target, layer), in the order the rows join: by their window's first block
    rows = sorted(((f, target, l, window_layers(l, window, L)) for f in range(F) for target in KNOCKOUT_TARGETS
                   for l in range(L)), key=lambda row: row[3].start)
    blocked = torch.zeros(len(rows), T, T, dtype=torch.bool, device=device)  # (rows, queries, keys)
    for i, (f, target, _, _) in enumerate(rows):
        blocked[i, T - 1, list(positions[f][target])] = True
    hidden = torch.empty(0, T, layout.hidden_size, device=device, dtype=inputs[0].dtype)
    joined = 0
    for block in range(L):
        joining = [f for f, _, _, layers in rows[joined:] if layers.start == block]
        if joining:
            hidden = torch.cat([hidden, inputs[block][joining]])
            joined += len(joining)
        inside = torch.tensor([block in layers for _, _, _, layers in rows[:joined]], device=device)
        hidden = call.masked(layout.block(block), hidden, blocked[:joined] & inside[:, None, None])
    probabilities = torch.softmax(layout.unembed(layout.final_norm(hidden[:, -1])).float(), dim=-1)
    facts = torch.tensor([f for f, _, _, _ in rows], device=device)
    knocked = probabilities.gather(1, answer_ids[facts][:, None])[:, 0].cpu().numpy()

    results = []
    for f, (request, prompt) in enumerate(zip(requests, prompts)):
        scores = {target: np.zeros(L, dtype=np.float32) for target in KNOCKOUT_TARGETS}
        for i, (fact, target, l, _) in enumerate(rows):
            if fact == f:
                scores[target][l] = knocked[i]
        for array in scores.values():
            array.setflags(write=False)
        answer_id = int(answer_ids[f])
        results.append(KnockoutResult(
            subject=request.s, relation=request.r, prompt=prompt.text, input_ids=prompt.input_ids,
            input_tokens=tuple(tokenizer.convert_ids_to_tokens(list(prompt.input_ids))),
            subject_range=prompt.subject_range, answer=tokenizer.convert_ids_to_tokens(answer_id), answer_id=answer_id,
            window=window, high_score=float(measured[f, 0]), positions=positions[f], scores=scores))
    return results
