"""Forward hooks as context managers, after ROME's `nethook`.

`Trace`/`TraceDict` record a module's output (or input); an optional `edit_output(output) -> output` rewrites it.
`StopForward` with `stop=True` ends a forward pass early: once the traced module has run, or before it runs when only
its input is asked for.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

EditFn = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by a `Trace(stop=True)` hook to end the forward pass; swallowed by the Trace's __exit__."""


def primary(output):
    """The tensor a module produced: HF attention modules return (output, weights); blocks may return tuples."""
    return output[0] if isinstance(output, tuple) else output


def replace_primary(output, tensor: torch.Tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


class Trace(AbstractContextManager):
    """Hook one module: keep its output (`.output`) or input (`.input`), optionally rewrite the output.

    Args:
        module: the module to hook.
        retain_output / retain_input: store the primary output tensor / first positional input.
        edit_output: function applied to the primary output tensor; its result replaces it.
        detach / clone: applied to what is retained.
        stop: raise StopForward after this module ran (use as `with Trace(m, stop=True) as t: model(x)`); with
            retain_output False and no edit_output, before it runs (its input is all that is kept).
    """

    def __init__(
        self,
        module: nn.Module,
        retain_output: bool = True,
        retain_input: bool = False,
        edit_output: EditFn | None = None,
        detach: bool = True,
        clone: bool = False,
        stop: bool = False,
    ) -> None:
        self.output: torch.Tensor | None = None
        self.input: torch.Tensor | None = None

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.detach() if detach else tensor
            return tensor.clone() if clone else tensor

        def keep_input(inputs: tuple) -> None:
            if retain_input and inputs:
                self.input = keep(inputs[0])

        def hook(_module, inputs, output):
            keep_input(inputs)
            if edit_output is not None:
                output = replace_primary(output, edit_output(primary(output)))
            if retain_output:
                self.output = keep(primary(output))
            if stop:
                raise StopForward()
            return output

        def stop_before(_module, inputs):
            keep_input(inputs)
            raise StopForward()

        if stop and not retain_output and edit_output is None:
            self._handle = module.register_forward_pre_hook(stop_before)
        else:
            self._handle = module.register_forward_hook(hook)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is StopForward

    def close(self) -> None:
        self._handle.remove()


class TraceDict(dict, AbstractContextManager):
    """Several Traces keyed by name: `with TraceDict({"h.3": m3, ...}) as td: model(x); td["h.3"].output`.

    `edit_output(name, tensor) -> tensor` rewrites each hooked module's output.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module] | Iterable[tuple[str, nn.Module]],
        retain_output: bool = True,
        retain_input: bool = False,
        edit_output: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        detach: bool = True,
        clone: bool = False,
        stop: bool = False,
    ) -> None:
        super().__init__()
        items = list(modules.items() if isinstance(modules, dict) else modules)
        for index, (name, module) in enumerate(items):
            edit = (lambda t, _n=name: edit_output(_n, t)) if edit_output is not None else None
            self[name] = Trace(module, retain_output, retain_input, edit, detach, clone,
                               stop=stop and index == len(items) - 1)

    def __exit__(self, exc_type, exc, tb) -> bool:
        for trace in self.values():
            trace.close()
        return exc_type is StopForward


class RecordCall(AbstractContextManager):
    """Record the positional and keyword arguments of one call of `module` (e.g. a transformer block's mask,
    position ids and rotary embeddings), so the block can be called again by hand with the same context.
    stop: end the forward before `module` runs (its input, `args[0]`, is then all the forward computed beyond it)."""

    def __init__(self, module: nn.Module, stop: bool = False) -> None:
        self.args: tuple = ()
        self.kwargs: dict = {}

        def hook(_module, args, kwargs):
            self.args, self.kwargs = tuple(args), dict(kwargs)
            if stop:
                raise StopForward()

        self._handle = module.register_forward_pre_hook(hook, with_kwargs=True)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._handle.remove()
        return exc_type is StopForward


@contextmanager
def swap_modules(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> Iterator[int]:
    """Within the context, every submodule `m` of `model` for which `replacement(m)` is a module is replaced by it;
    the originals are put back on exit (hooks registered on them do not run meanwhile). Yields the number swapped."""
    swapped = []
    try:
        for name, module in list(model.named_modules()):
            new = replacement(module) if name else None
            if new is not None:
                parent_name, _, attribute = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, attribute, new)
                swapped.append((parent, attribute, module))
        yield len(swapped)
    finally:
        for parent, attribute, module in reversed(swapped):
            setattr(parent, attribute, module)
