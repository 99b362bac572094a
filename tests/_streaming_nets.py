"""Small multi-step DSR networks for the streaming and serving tests (layout [T, B, ...])."""

from __future__ import annotations

import torch
from torch import nn

from dsr_deploy.neuron import DSRIFNode, DSRLIFNode


class SeqToANN(nn.Module):
    """Stateless layers applied to every time step at once ([T, B, ...] folded into one batch), as SpikingJelly's
    SeqToANNContainer does."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        y = self.body(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


def conv_net(seed: int = 0, channels: int = 2, size: int = 8, classes: int = 5) -> nn.Module:
    """conv-BN-IF -> linear-LIF: both neuron kinds, a 4-D and a 2-D membrane."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        SeqToANN(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4)),
        DSRIFNode(T=None, v_threshold=1.0, alpha=0.5),
        SeqToANN(nn.Flatten(), nn.Linear(4 * size * size, classes)),
        DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=5e-4),
    )
    bn = net[0].body[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 2.0)
        net[2].body[1].weight.mul_(8.0)  # so the last layer fires on a few steps, not never
    return net.eval()


def mlp_net(seed: int = 1, features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        SeqToANN(nn.Linear(features, 8)),
        DSRLIFNode(T=None, v_threshold=0.05, tau=2.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=0.01),
        SeqToANN(nn.Linear(8, classes)),
        DSRIFNode(T=None, v_threshold=0.5, alpha=0.5),
    )
    with torch.no_grad():
        net[2].body[0].weight.mul_(1.0)  # LIF spikes are 1/dt = 20x the threshold
    return net.eval()


class UnrolledMultiStep(nn.Module):
    """A multi-step model ``input [T, B, ...] -> output [T, B, ...]`` built from a streaming module by unrolling
    T steps: it exports to ONNX (dsr step nodes + their functions) without the export helper's lowering, so the
    repository and serving tests have a multi-step ONNX model of the contract's names."""

    def __init__(self, streaming_module):
        super().__init__()
        self.sm = streaming_module

    def forward(self, x):
        states = [torch.zeros((x.shape[1], *s), dtype=torch.float32) for s in self.sm.state_shapes]
        ys = []
        for t in range(x.shape[0]):
            y, *states = self.sm(x[t], *states)
            ys.append(y)
        return torch.stack(ys)


def export_multistep_onnx(net: nn.Module, x: torch.Tensor, path) -> None:
    """Write ``net`` as a multi-step ONNX model (fixed T, symbolic batch at dim 1) with names input/output."""
    import onnx

    from dsr_deploy.export import streaming as S

    model = UnrolledMultiStep(S.build_streaming_module(net, x[0])).eval()
    with torch.no_grad():
        prog = torch.onnx.export(model, (x,), None, dynamo=True, input_names=["input"], output_names=["output"],
                                 dynamic_shapes=({1: torch.export.Dim("batch")},))
    proto = prog.model_proto
    S.add_step_functions(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
