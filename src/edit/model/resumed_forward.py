"""Logits of a batch when a tensor is added to one block's output, recomputed from that block on.

ROME optimises delta, a vector added to layer l's MLP output; the blocks up to l compute the same thing at every
step (only the MLP's output changes, and it enters the block's output by addition). `ResumedForward` runs the model
once, keeps block l's output (B, T, d) and the arguments the model called its blocks with (mask, positions, rotary
embeddings), and then gives the logits for any added tensor by running blocks l+1..L-1 only, then the final norm and
the unembedding at the positions read. Exact up to float rounding (block output + added, instead of adding inside the
block); an edit at layer 1 of 8 runs 6 blocks per step instead of 8. With `pack`, the blocks run on the prompts
packed into fewer rows (`src.edit.model.packing`) when that saves rows: no pads computed. `resume=False` is the
plain path it replaces: the whole model per call, the tensor added to block l's output by a hook.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from src.edit.model.block_call import BlockCall, attention_takes_any_mask
from src.edit.model.hooks import RecordCall, Trace
from src.edit.model.layout import ModelLayout
from src.edit.model.packing import PackedLayout, packed_call
from src.edit.prompts.batch import PromptBatch


class ResumedForward:
    """read_rows, read_columns: (n,) the (row, column) positions whose logits are read.

    Built under no_grad: `initial_logits` (n, vocab) float32 are the model's own at those positions, and
    `start` (B, T, d) is block `layer`'s output. Calling it with `added` (B, T, d) gives the logits (n, vocab) float32
    of the model whose block `layer` output is start + added, differentiable in `added`. pack: run the blocks above
    on the prompts packed (used when it saves rows and the blocks' arguments can be packed; `packed` says if so)."""

    def __init__(self, model: PreTrainedModel, layer: int, batch: PromptBatch, read_rows: torch.Tensor,
                 read_columns: torch.Tensor, resume: bool = True, pack: bool = True) -> None:
        self.layout = ModelLayout.of(model)
        self.model, self.batch, self.resume = model, batch, resume
        block = self.block = self.layout.block(layer)
        with torch.no_grad(), Trace(block) as trace, RecordCall(block) as record:
            self.initial_logits = batch.forward(model).logits[read_rows, read_columns].float()
        self.start = trace.output
        self.call = BlockCall.bind(block, record.args[1:], record.kwargs, num_tokens=batch.input_ids.shape[1])
        self.blocks = [self.layout.block(j) for j in range(layer + 1, self.layout.num_layers)]
        self.read_rows, self.read_columns = read_rows, read_columns
        self.packing, self.call_packed, self.read_packed = None, None, None  # the packed rows' layout, call, reads
        if resume and pack and self.blocks and attention_takes_any_mask(model):
            packing = PackedLayout.of(batch.attention_mask)
            call = packed_call(self.call, packing) if packing.num_rows < len(batch.input_ids) else None
            if call is not None:
                self.packing, self.call_packed = packing, call
                self.read_packed = packing.slots(read_rows, read_columns)

    @property
    def packed(self) -> bool:
        return self.packing is not None

    def placed(self, rows: torch.Tensor, columns: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(B, T, d): zeros with vectors (n, d) at (rows, columns), (n,) each; differentiable in `vectors`."""
        return torch.zeros_like(self.start).index_put((rows, columns), vectors.to(self.start.dtype))

    def __call__(self, added: torch.Tensor) -> torch.Tensor:
        if not self.resume:
            with Trace(self.block, retain_output=False, edit_output=lambda output: output + added.to(output.dtype)):
                return self.batch.forward(self.model).logits[self.read_rows, self.read_columns].float()
        hidden = self.start + added.to(self.start.dtype)
        if self.packing is not None:
            read = self.call_packed.through(self.blocks, self.packing.gather(hidden))[self.read_packed]
        else:
            read = self.call.through(self.blocks, hidden)[self.read_rows, self.read_columns]
        return self.layout.unembed(self.layout.final_norm(read)).float()
