"""convert: finding DSR neurons (ours and SpikingJelly's), effective parameters, the inference copy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from export_nets import (
    NEURON_SHAPE,
    OURS_CONV_SHAPE,
    SJ_CONV_SHAPE,
    ours_conv_net,
    ours_neuron_net,
    sj_conv_net,
    sj_neuron_net,
    spiky_input,
)
from torch import nn

from dsr_deploy.convert import (
    IFSpike,
    LIFSpike,
    find_neurons,
    inference_copy,
    inference_modules,
    neuron_kind,
    onnx_attributes,
)
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode


def test_finds_spikingjelly_neurons_with_effective_parameters():
    infos = find_neurons(sj_conv_net())
    assert [(i.kind, i.source, i.name) for i in infos] == [("if", "spikingjelly", "2"), ("lif", "spikingjelly", "4"),
                                                          ("if", "spikingjelly", "7")]
    first = infos[0]
    # SpikingJelly stores 0.25 below the bound 0.6: the effective threshold is the bound.
    assert first.v_threshold_stored == pytest.approx(0.25) and first.clamped
    assert first.v_threshold == np.float32(0.6)
    lif = infos[1]
    assert not lif.clamped and lif.v_threshold == np.float32(0.3)
    beta = math.exp(-0.05 / 1.0)
    assert lif.decay == float(np.float32(beta)) and lif.gain == float(np.float32(1.0 - beta))
    assert lif.gain != float(np.float32(1.0 - np.float32(beta)))  # from the double, not 1 - fl32(decay)


def test_finds_our_neurons_including_buffer_thresholds():
    infos = find_neurons(ours_conv_net())
    assert [(i.kind, i.source) for i in infos] == [("lif", "dsr_deploy"), ("if", "dsr_deploy"), ("if", "dsr_deploy")]
    assert infos[2].v_threshold == np.float32(0.4)  # a buffer (v_threshold_training=False)


def test_recognised_by_name_module_and_attributes_without_importing_spikingjelly():
    # A class that only looks like SpikingJelly's (name, module path, attributes) is recognised: detection never
    # needs the spikingjelly package. The same name from another package is not.
    def make(module_path):
        cls = type("DSRLIFNode", (nn.Module,), {})
        cls.__module__ = module_path
        m = cls()
        m.v_threshold, m.alpha, m.v_threshold_lower_bound = torch.tensor(0.05), 0.3, 0.1
        m.tau, m.delta_t = 2.0, 0.05
        return m

    fake = make("spikingjelly.activation_based.neuron.dsr")
    assert neuron_kind(fake) == "lif"
    (info,) = find_neurons(nn.Sequential(fake))
    assert info.v_threshold == np.float32(0.1) and info.clamped
    assert neuron_kind(make("someone_else.neurons")) is None
    incomplete = make("spikingjelly.activation_based.neuron.dsr")
    del incomplete.tau
    assert neuron_kind(incomplete) is None


def test_user_model_is_not_mutated():
    model = sj_conv_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]
    inf = inference_copy(model)
    assert model.training and all(m.training for m in model.modules())
    assert [type(m) for m in model.modules()] == types_before
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model[2].v_threshold.item() == pytest.approx(0.25)  # still below its bound: not clamped in place
    assert not inf.training
    assert [type(m) for m in inference_modules(inf)] == [IFSpike, LIFSpike, IFSpike]


@pytest.mark.parametrize("factory,shape", [(sj_conv_net, SJ_CONV_SHAPE), (ours_conv_net, OURS_CONV_SHAPE),
                                           (sj_neuron_net, NEURON_SHAPE), (ours_neuron_net, NEURON_SHAPE)])
def test_inference_copy_is_bit_exact_with_the_training_model(factory, shape):
    model = factory()
    x = torch.from_numpy(spiky_input(shape))
    with torch.no_grad():
        ref = model(x)
        for target in ("op", "script"):
            got = inference_copy(model, target)(x)
            assert torch.equal(got, ref), target
    assert ref.abs().sum() > 0  # the nets fire


def test_shared_neuron_is_replaced_everywhere():
    shared = DSRIFNode(T=None, v_threshold=1.0)
    model = nn.Sequential(shared, nn.Identity(), shared)
    inf = inference_copy(model)
    assert isinstance(inf[0], IFSpike) and inf[0] is inf[2]
    assert len(find_neurons(model)) == 1


def test_single_neuron_model_and_no_neuron_model():
    inf = inference_copy(DSRLIFNode(T=None))
    assert isinstance(inf, LIFSpike)
    with pytest.raises(ValueError, match="no supported neuron"):
        inference_copy(nn.Sequential(nn.ReLU()))


def test_onnx_attributes_follow_the_contract():
    info = find_neurons(sj_conv_net())[1]
    attrs = onnx_attributes(info)
    assert set(attrs) == {"v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "plugin_namespace",
                          "plugin_version"}
    assert attrs["plugin_namespace"] == "dsr" and attrs["plugin_version"] == "1"
    assert attrs["decay"] == info.decay and attrs["gain"] == info.gain
