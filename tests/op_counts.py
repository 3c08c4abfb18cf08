"""Counting what a step dispatches (a TorchDispatchMode): convolutions forward, and backward by what
each computes (convolution_backward's output_mask: [input, weight, bias])."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class ConvCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.forward = self.weight_grads = self.input_grads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.forward += 1
        if func.overloadpacket is torch.ops.aten.convolution_backward:
            self.input_grads += bool(args[-1][0])
            self.weight_grads += bool(args[-1][1])
        return func(*args, **(kwargs or {}))


def conv_count(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
